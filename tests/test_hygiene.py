"""Project hygiene: notebooks in git, their defaults, the lock, the configuration."""

import json
import re
import subprocess
import sys

import jupytext
import pytest
import yaml

from churnlab.errors import ChurnlabError
from churnlab.pipeline.binding import bind_parameters, declared_parameters, read_notebook
from churnlab.pipeline.stages import load_stage, notebook_stages, parameter_name

from conftest import DEFAULTS, ROOT


def _lockfile():
    """tools/lockfile.py: build-time code (`make lock`), outside the runtime package."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("lockfile", ROOT / "tools" / "lockfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.py"))


def test_there_are_four_numbered_pipeline_notebooks():
    assert [p.stem for p in NOTEBOOKS] == ["01_explore", "02_prepare", "03_train", "04_evaluate"]
    assert notebook_stages(ROOT) == ["explore", "prepare", "train", "evaluate"]


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs_but_reference_ones(script):
    notebook = json.loads(script.with_suffix(".ipynb").read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] != "code":
            continue
        assert cell["execution_count"] is None, "execution counts are stripped (nbstripout)"
        if not cell["metadata"].get("keep_output"):
            assert cell["outputs"] == [], "outputs are stripped (nbstripout)"
        else:
            assert "NBVAL_CHECK_OUTPUT" in "".join(cell["source"]) and cell["outputs"]


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_ipynb_is_in_step_with_its_script(script):
    paired = jupytext.read(script.with_suffix(".ipynb"))
    source = jupytext.read(script)
    assert [(c.cell_type, c.source) for c in paired.cells] == [
        (c.cell_type, c.source) for c in source.cells
    ], "run `jupytext --sync`"


@pytest.mark.parametrize("stage", ["explore", "prepare", "train", "evaluate"])
def test_every_notebook_parameter_takes_its_default_from_params(stage):
    """The parameters cell is the contract and params/ holds the values: no value is written
    in a notebook, so one's own data needs params edits only."""
    from papermill.translators import papermill_translators

    loaded = load_stage(ROOT, stage)
    nb = read_notebook(ROOT / loaded.notebook)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    declared = papermill_translators.find_translator("churnlab", "python").inspect(cell)
    defaults = {p.name: p.default.strip() for p in declared}
    assert set(bind_parameters(loaded, set(defaults))) == set(defaults)
    for name, default in defaults.items():
        key = re.fullmatch(r"""param\("([^"]+)"\)""", default)
        assert key and parameter_name(key.group(1)) == name, f"{loaded.notebook}: {name}"


def test_a_param_default_under_another_name_is_refused(tmp_path):
    script = tmp_path / "nb.py"
    script.write_text(
        '# %% tags=["parameters"]\ntrain_seed: int = param("train.cv_folds")  # folds\n'
    )
    with pytest.raises(ChurnlabError, match="name it 'train_cv_folds'"):
        declared_parameters(read_notebook(script), script)


def test_no_column_name_of_the_telco_data_outside_its_defaults():
    # the shipped Telco description, whatever the project is configured for: a user's target
    # named like an ordinary word ("left") must not fail the check of the package
    schema = yaml.safe_load((DEFAULTS / "params" / "data.yaml").read_text())["schema"]
    names = [schema["id_column"], schema["target"], *schema["numeric"], *schema["categorical"]]
    pattern = re.compile("|".join(rf"\b{re.escape(n)}\b" for n in names))
    offenders = []
    for path in sorted((ROOT / "src").rglob("*.py")):
        offenders += [f"{path}: {m.group()}" for m in pattern.finditer(path.read_text())]
    for script in NOTEBOOKS:
        for cell in read_notebook(script).cells:
            if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
                offenders += [f"{script}: {m.group()}" for m in pattern.finditer(cell.source)]
    assert offenders == []


def package_files():
    """The package's code and its page templates."""
    return [p for p in (ROOT / "src").rglob("*") if p.suffix in (".py", ".html")]


# Words of the Telco data's world, and a currency: on other data they would be false. Their
# place is params/ (the Telco defaults: report.yaml's texts, evaluate.yaml's costs); only the
# module that fetches the built-in Telco table may name it.
TELCO_WORDS = re.compile(
    r"\b(telco|residential|contracts?|senior|gender|tenure|fib(?:er|re)|phone|internet"
    r"|streaming|dollars?|usd)\b|[\"']\$[\"']",
    re.IGNORECASE,
)


def test_no_telco_phrase_or_currency_in_the_package_or_its_templates():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {found.group()}"
        for path in sorted(package_files())
        if path.name != "fetch.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for found in TELCO_WORDS.finditer(line)
    ]
    assert offenders == []


def test_environment_yml_installs_the_same_lock():
    lock = (ROOT / "requirements.lock").read_text()
    lockfile = _lockfile()
    expected = lockfile.environment_yaml(lockfile.locked_pins(lock))
    assert (ROOT / "environment.yml").read_text() == expected


def test_every_dependency_is_locked_to_an_exact_version():
    pins = _lockfile().locked_pins((ROOT / "requirements.lock").read_text())
    for name in (
        "pandas",
        "scikit-learn",
        "papermill",
        "nbconvert",
        "dvc",
        "mlflow",
        "nbval",
        "pandera",
        "skops",
        "jupyterlab",
        "jupytext",
    ):
        assert name in pins
    assert pins["pandas"].startswith("3.")
    major, minor = (int(x) for x in pins["mlflow"].split(".")[:2])
    assert major == 3 and minor >= 17
    assert '"mlflow>=3.17,<4"' in (ROOT / "pyproject.toml").read_text()


def test_analytics_and_telemetry_are_off_in_the_project():
    config = (ROOT / ".dvc" / "config").read_text()
    assert re.search(r"analytics\s*=\s*false", config)
    makefile = (ROOT / "Makefile").read_text()
    assert "export MLFLOW_DISABLE_TELEMETRY := true" in makefile
    assert "export DVC_NO_ANALYTICS := 1" in makefile


def test_pre_commit_strips_notebooks():
    hooks = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    ids = [hook["id"] for repo in hooks["repos"] for hook in repo["hooks"]]
    assert "nbstripout" in ids


def test_no_data_model_or_report_is_in_git():
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    heavy = [
        t
        for t in tracked
        if re.match(
            r"(data|models|reports|plots)/.*"
            r"\.(csv|parquet|skops|ipynb|html)$",
            t,
        )
    ]
    assert heavy == []


# Libraries that take a second or more to import; the CLI and the stage model load them only
# in the function that needs them, so `churnlab --help` and a notebook's param() stay quick.
HEAVY_LIBRARIES = (
    "pandas",
    "numpy",
    "sklearn",
    "mlflow",
    "papermill",
    "nbconvert",
    "nbformat",
    "jupytext",
    "jupyter_client",
    "matplotlib",
    "skops",
)


@pytest.mark.parametrize(
    ("module", "not_loaded"),
    [
        ("churnlab.cli", HEAVY_LIBRARIES),
        ("churnlab.pipeline.stages", (*HEAVY_LIBRARIES, "churnlab.pipeline.execute")),
    ],
)
def test_the_cli_and_the_stage_model_import_no_heavy_library(module, not_loaded):
    """A fresh interpreter, so that what other tests imported does not count."""
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, {module}; print(*sorted(sys.modules))"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [name for name in not_loaded if name in loaded] == []
