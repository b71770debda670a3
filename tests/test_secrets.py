"""Secrets: which names mark a value as secret, and masking them in notebooks and params."""

import nbformat

from churnlab.secrets import (
    MASK,
    is_secret_name,
    masked_params,
    redact,
    redact_tree,
    secret_values,
)


def test_names_that_mark_a_secret():
    for name in (
        "MLFLOW_TRACKING_TOKEN",
        "DB_PASSWORD",
        "api_key",
        "aws_secret_access_key",
        "data.api_token",
        "AUTH",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        assert is_secret_name(name), name
    for name in ("GIT_AUTHOR_NAME", "tokenizer", "PATH", "HOME", "passenger_count", "keyboard"):
        assert not is_secret_name(name), name


def test_secret_values_come_from_the_environment_and_from_params_longest_first():
    values = secret_values(
        {"source": {"db_password": "hunter22-long", "user": "analyst-long-name"}},
        {"SERVICE_TOKEN": "tok-0123456789", "SHORT_TOKEN": "abc", "USER": "someone-else"},
    )
    assert values == ["tok-0123456789", "hunter22-long"]  # short values are left alone


def test_redact_masks_every_occurrence():
    assert redact("a tok-0123456789 b tok-0123456789", ["tok-0123456789"]) == f"a {MASK} b {MASK}"


def test_a_notebook_is_masked_in_sources_outputs_and_metadata():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("token = 'tok-0123456789'")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="tok-0123456789\n")]
    nb.cells.append(cell)
    nb.metadata["papermill"] = {"parameters": {"token": "tok-0123456789"}}
    clean = redact_tree(nb, ["tok-0123456789"])
    assert "tok-0123456789" not in nbformat.writes(clean)
    assert "tok-0123456789" in nbformat.writes(nb), "the input is not changed"
    assert isinstance(clean, nbformat.NotebookNode)


def test_params_shown_to_people_hide_secret_values():
    shown = masked_params({"data": {"source": "x.csv", "api_token": "tok-0123456789"}})
    assert shown == {"data": {"source": "x.csv", "api_token": MASK}}
