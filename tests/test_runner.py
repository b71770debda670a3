"""The notebook runner on tiny fixture notebooks, each named for the behaviour it tests."""

import json
import shutil
from pathlib import Path

import pytest

from churnlab.errors import ChurnlabError
from churnlab.runner import (
    CONTENT_SECURITY_POLICY,
    bind_parameters,
    load_stage,
    parameter_name,
    run_stage,
)

from conftest import ROOT

FIXTURES = Path(__file__).parent / "fixtures"

DVC_YAML = """
vars:
  - params/paths.yaml
stages:
  demo:
    cmd: churnlab run demo
    deps:
      - notebooks/demo.py
    params:
      - params/paths.yaml:
          - paths.result
      - params/demo.yaml:
          - demo.n
    outs:
      - ${paths.result}:
          persist: true
      - ${paths.reports}/demo.ipynb:
          persist: true
      - ${paths.reports}/demo.html:
          persist: true
"""


def make_project(root: Path, notebook: str) -> Path:
    (root / "params").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params" / "paths.yaml").write_text(
        "paths:\n  result: out/result.txt\n  reports: reports\n"
    )
    (root / "params" / "demo.yaml").write_text("demo:\n  n: 2\n")
    shutil.copy(FIXTURES / notebook, root / "notebooks" / "demo.py")
    return root


def outputs(root: Path) -> dict[str, bytes]:
    return {
        name: (root / name).read_bytes()
        for name in ("out/result.txt", "reports/demo.ipynb", "reports/demo.html")
    }


def test_parameter_names_flatten_param_keys():
    assert parameter_name("train.cv_folds") == "train_cv_folds"


def test_a_stage_gets_exactly_its_param_keys(tmp_path):
    stage = load_stage(make_project(tmp_path, "ok.py"), "demo")
    assert stage.values == {"paths.result": "out/result.txt", "demo.n": 2}
    assert bind_parameters(stage, {"paths_result", "demo_n"}) == {
        "paths_result": "out/result.txt",
        "demo_n": 2,
    }
    assert stage.notebook == Path("notebooks/demo.py")


def test_a_whole_section_is_passed_per_key_unless_declared_by_name():
    stage = load_stage(ROOT, "train")
    assert stage.values["train"]["cv_folds"] == 5
    paths = {parameter_name(k) for k in stage.values if k != "train"}
    per_key = bind_parameters(stage, paths | {f"train_{k}" for k in stage.values["train"]})
    assert per_key["train_cv_folds"] == 5
    with pytest.raises(ChurnlabError, match=r"\['train_cv_folds', .*not declared"):
        bind_parameters(stage, paths | {"train_seed"})
    assert bind_parameters(stage, paths | {"train"})["train"] == stage.values["train"]


def test_overrides_reach_into_mappings_and_typos_are_errors():
    stage = load_stage(ROOT, "train", {"train.gradient_boosting.max_iter": 7})
    assert stage.values["train"]["gradient_boosting"]["max_iter"] == 7
    with pytest.raises(ChurnlabError, match="no such key in params"):
        load_stage(ROOT, "train", {"train.gradient_boosting.max_iterations": 7})
    with pytest.raises(
        ChurnlabError,
        match=r"stage 'train' does not read param\(s\) "
        r"\['evaluate.seed'\]",
    ):
        load_stage(ROOT, "train", {"evaluate.seed": 1})


def test_a_good_run_writes_stable_outputs_and_a_script_free_report(tmp_path):
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    first = outputs(root)
    assert first["out/result.txt"] == b"line 0\nline 1\n"
    executed = json.loads(first["reports/demo.ipynb"])
    text = first["reports/demo.ipynb"].decode()
    assert "start_time" not in text and "duration" not in text
    assert executed["metadata"]["papermill"]["parameters"] == {
        "paths_result": "out/result.txt",
        "demo_n": 2,
    }
    html = first["reports/demo.html"].decode()
    assert "wrote 2 lines" in html
    assert "<script" not in html.lower()
    assert "Path(paths_result)" not in html  # no code cells
    assert "demo_n = 2" not in html  # no parameters cell
    run_stage("demo", root=root, progress=False)
    assert outputs(root) == first  # same inputs, same bytes


def test_a_failing_cell_names_notebook_cell_and_error_and_keeps_earlier_outputs(tmp_path):
    root = make_project(tmp_path, "ok.py")
    run_stage("demo", root=root, progress=False)
    good = outputs(root)
    shutil.copy(FIXTURES / "broken.py", root / "notebooks" / "demo.py")
    with pytest.raises(ChurnlabError) as error:
        run_stage("demo", root=root, progress=False)
    message = str(error.value)
    assert message.startswith("notebooks/demo.py: cell In [4] failed")
    assert "ValueError: demo_n=2 is not allowed" in message
    kept = root / ".churnlab" / "failed" / "demo.ipynb"
    assert str(kept) in message and "ValueError" in kept.read_text()
    assert outputs(root) == good  # the half result did not replace the good one
    assert not (root / ".churnlab" / "backup" / "demo").exists()


def test_a_failing_first_run_leaves_no_half_result(tmp_path):
    root = make_project(tmp_path, "broken.py")
    with pytest.raises(ChurnlabError, match=r"cell In \[4\] failed"):
        run_stage("demo", root=root, progress=False)
    assert not (root / "out" / "result.txt").exists()


def test_a_notebook_without_a_parameters_cell_is_an_error(tmp_path):
    root = make_project(tmp_path, "no_parameters.py")
    with pytest.raises(
        ChurnlabError, match="expected exactly one cell tagged 'parameters', found 0"
    ):
        run_stage("demo", root=root, progress=False)


def test_a_parameter_the_notebook_does_not_declare_is_an_error(tmp_path):
    root = make_project(tmp_path, "undeclared.py")
    with pytest.raises(ChurnlabError) as error:
        run_stage("demo", root=root, progress=False)
    assert (
        "['params/demo.yaml:demo.n'] passed by stage 'demo' as ['demo_n'] are not "
        "declared" in str(error.value)
    )


def test_a_declared_parameter_the_stage_does_not_pass_is_an_error(tmp_path):
    root = make_project(tmp_path, "extra_parameter.py")
    with pytest.raises(
        ChurnlabError,
        match=r"\['demo_colour'\] of the parameters cell are "
        r"not passed by stage 'demo'",
    ):
        run_stage("demo", root=root, progress=False)


def test_a_param_key_no_stage_reads_is_an_error(tmp_path):
    root = make_project(tmp_path, "ok.py")
    (root / "params" / "demo.yaml").write_text("demo:\n  n: 2\n  m: 3\n")
    with pytest.raises(ChurnlabError, match="params/demo.yaml: key 'demo.m' is read by no stage"):
        run_stage("demo", root=root, progress=False)


def test_an_unknown_stage_is_named(tmp_path):
    with pytest.raises(ChurnlabError, match="dvc.yaml: no stage 'trian'"):
        load_stage(ROOT, "trian")


def test_html_and_script_in_outputs_and_markdown_never_run_in_the_report(tmp_path):
    root = make_project(tmp_path, "html_payload.py")
    run_stage("demo", root=root, progress=False)
    html = (root / "reports" / "demo.html").read_text()
    assert "visible cell" in html and "<table" in html
    for payload in ("<script", "onclick", "onerror", "evil.invalid", "javascript:", "pwned"):
        assert payload not in html
    assert "markdown link</a>" in html and "an HTML one" in html  # the text stays
    for ordinary in (  # what markdown is for survives the sanitizer
        '<h2 id="Ordinary-markdown-stays">',
        "<em>emphasis</em>",
        "<strong>strong</strong>",
        "<code>code</code>",
        '<a href="https://example.org/page">ordinary link</a>',
        '<th style="text-align:right;">share</th>',
        "<li>second item</li>",
        '<img alt="a dot" src="data:image/png;base64,',
    ):
        assert ordinary in html
    policy = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
    assert policy in html


def secret_project(root: Path, fail: bool) -> Path:
    make_project(root, "secret.py")
    dvc_yaml = (root / "dvc.yaml").read_text()
    (root / "dvc.yaml").write_text(
        dvc_yaml.replace("- demo.n", "- demo.n\n          - demo.api_token")
    )
    (root / "params" / "demo.yaml").write_text(
        f"demo:\n  n: {0 if fail else 2}\n  api_token: canary-param-5f1e0c\n"
    )
    return root


def written_text(root: Path) -> str:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".ipynb", ".html")]
    assert files
    return "\n".join(p.read_text() for p in files)


def test_no_secret_from_params_or_environment_reaches_a_notebook_or_report(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURNLAB_CANARY_TOKEN", "canary-env-93b7aa")
    root = secret_project(tmp_path, fail=False)
    run_stage("demo", root=root)
    text = written_text(root / "reports")
    assert "canary-param-5f1e0c" not in text and "canary-env-93b7aa" not in text
    assert text.count("***") >= 3  # parameter cell, printed param, printed variable


def test_a_failing_run_keeps_secrets_out_of_its_message_and_kept_notebook(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURNLAB_CANARY_TOKEN", "canary-env-93b7aa")
    root = secret_project(tmp_path, fail=True)
    with pytest.raises(ChurnlabError) as failure:
        run_stage("demo", root=root)
    assert "cannot log in with ***" in str(failure.value)
    assert "canary-param-5f1e0c" not in str(failure.value)
    text = written_text(root / ".churnlab")
    assert "canary-param-5f1e0c" not in text and "canary-env-93b7aa" not in text
