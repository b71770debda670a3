"""Binding a stage's param values to its notebook's ``parameters`` cell.

The runner passes exactly the keys a stage declares in ``dvc.yaml`` to the notebook's
``parameters`` cell (``a.b`` becomes ``a_b``) and refuses a key the cell does not declare, or
a declared parameter no key feeds. The notebook runs on the project's own kernel, and what
changes from run to run (times, ids, paths of the run) is scrubbed from its executed copy.
"""

from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path
from typing import Any

from churnlab.config import read_yaml
from churnlab.errors import ChurnlabError
from churnlab.pipeline.stages import Stage, load_stage, notebook_stages, parameter_name

KERNEL_NAME = "churnlab"


def read_notebook(path: Path):
    """A jupytext percent script (or .ipynb) as a notebook bound to the project kernel."""
    import jupytext

    if not path.is_file():
        raise ChurnlabError(f"{path}: notebook not found")
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {
        "name": KERNEL_NAME,
        "display_name": "churnlab (Python 3.11)",
        "language": "python",
    }
    nb.metadata.pop("jupytext", None)
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:03d}"  # jupytext makes random ids: executed bytes would vary
        cell.metadata.setdefault("tags", [])  # papermill expects every cell to have a list
    return nb


_PARAM_DEFAULT = re.compile(r"""^param\(\s*["']([^"']+)["']\s*\)$""")


def declared_parameters(nb, notebook: Path) -> set[str]:
    """The names declared in the notebook's one ``parameters`` cell.

    A parameter whose default is ``param("a.b")`` (its value in ``params/``, see
    :mod:`churnlab.notebook`) must be named after its key (``a_b``), so that the cell reads
    as the interface it is: the runner passes ``a.b`` to exactly that name.

    Raises:
        ChurnlabError: no ``parameters`` cell, or more than one; a ``param("key")`` default
            under another name.
    """
    from papermill.translators import papermill_translators

    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ChurnlabError(
            f"{notebook}: expected exactly one cell tagged 'parameters', found {len(tagged)}"
        )
    declared = papermill_translators.find_translator(KERNEL_NAME, "python").inspect(tagged[0])
    for parameter in declared:
        match = _PARAM_DEFAULT.match(str(parameter.default).strip())
        if match and parameter_name(match.group(1)) != parameter.name:
            raise ChurnlabError(
                f"{notebook}: parameter '{parameter.name}' takes param('{match.group(1)}'); "
                f"name it '{parameter_name(match.group(1))}'"
            )
    return {p.name for p in declared}


def bind_parameters(stage: Stage, declared: set[str]) -> dict[str, Any]:
    """The notebook parameters for a stage's param values, checked against the notebook.

    A key becomes a parameter by its flattened name (``train.cv_folds`` -> ``train_cv_folds``).
    A whole section (a key without a dot, such as ``train``) is passed whole when the notebook
    declares its name, otherwise as one parameter per key of the section; so a key added to
    the section by mistake (``train.famliy``) reaches the notebook and is refused there.

    Raises:
        ChurnlabError: a parameter the cell does not declare; a declared parameter that the
            stage does not pass.
    """
    given: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in stage.values.items():
        name = parameter_name(key)
        if "." not in key and name not in declared and isinstance(value, dict):
            for child, sub in value.items():
                given[parameter_name(f"{key}.{child}")] = sub
                origin[parameter_name(f"{key}.{child}")] = f"{stage.files[key]}:{key}.{child}"
        else:
            given[name] = value
            origin[name] = f"{stage.files[key]}:{key}"
    problems = []
    unknown = sorted(set(given) - declared)
    if unknown:
        problems.append(
            f"param(s) {[origin[n] for n in unknown]} passed by stage '{stage.name}' as "
            f"{unknown} are not declared in the notebook's parameters cell (a typo?)"
        )
    missing = sorted(declared - set(given))
    if missing:
        problems.append(
            f"parameter(s) {missing} of the parameters cell are not passed by stage "
            f"'{stage.name}': add their keys to the stage's params in dvc.yaml"
        )
    if problems:
        raise ChurnlabError(f"{stage.notebook}: " + "; ".join(problems))
    return given


def scrub_notebook(nb, parameters: dict[str, Any], notebook: Path):
    """Remove what changes from run to run (times, durations, paths of the run)."""
    nb = copy.deepcopy(nb)
    nb.metadata["papermill"] = {"input_path": str(notebook), "parameters": parameters}
    nb.metadata.pop("widgets", None)
    language = nb.metadata.get("language_info", {})
    if "version" in language:  # 3.11.7 here, 3.11.2 there: keep what the lock fixes
        language["version"] = ".".join(str(language["version"]).split(".")[:2])
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index:03d}"  # papermill gives the injected cell a random id
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("execution", None)
    return nb


def prepare_profile(root: Path, profile: Path, out_dir: Path) -> list[Path]:
    """Write each pipeline notebook, parameterized for a profile, into ``out_dir``.

    The notebooks come from their ``.ipynb`` halves (with the reference outputs of cells
    marked ``keep_output``) and get the stage's params with the profile's values injected.
    Relative paths then resolve inside ``out_dir``, the profile's own output root, which
    gets ``dvc.yaml`` and ``params/`` too, so that each notebook's first cell finds its
    project there (:mod:`churnlab.notebook`) and not the user's.

    Raises:
        ChurnlabError: a profile key that no notebook stage reads.
    """
    import papermill

    overrides = read_yaml(profile) or {}
    used: set[str] = set()
    written = []
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "dvc.yaml", out_dir / "dvc.yaml")
    shutil.copytree(root / "params", out_dir / "params", dirs_exist_ok=True)
    for name in notebook_stages(root):
        stage = load_stage(root, name, overrides, strict=False)
        used |= set(overrides) - set(stage.unread)
        nb = read_notebook(root / stage.notebook.with_suffix(".ipynb"))
        parameters = bind_parameters(stage, declared_parameters(nb, stage.notebook))
        for cell in nb.cells:  # nbval compares only cells marked as run; git strips counts
            if cell.cell_type == "code" and cell.get("outputs"):
                cell.execution_count = 1
        target = out_dir / f"{stage.notebook.stem}.ipynb"
        papermill.execute_notebook(
            nb,
            str(target),
            parameters=parameters,
            kernel_name=KERNEL_NAME,
            language="python",
            prepare_only=True,
            progress_bar=False,
        )
        written.append(target)
    unused = sorted(set(overrides) - used)
    if unused:
        raise ChurnlabError(f"{profile}: key(s) {unused} are read by no notebook stage")
    return written
