"""Every stage's code dependencies are in its ``deps``, so that ``dvc status`` is honest.

For each stage of ``dvc.yaml`` the test follows, from what the stage runs (its notebook, and
the ``churnlab`` sub-command of its ``cmd`` with the code that executes notebooks), every
import of a churnlab module, transitively, including imports inside functions (a lazy import
is still code the stage runs). Each of those files must be a dep of the stage, or lie in a
folder that is. Package data read at run time (the report's templates) is checked the same way.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from churnlab.config import read_yaml

from conftest import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "churnlab"
STAGES = read_yaml(ROOT / "dvc.yaml")["stages"]


def module_file(name: str) -> Path | None:
    """The file of ``churnlab.a.b`` (a module or a package's ``__init__``), if it exists."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(tree: ast.AST, here: str | None = None) -> set[str]:
    """The churnlab modules a piece of code imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "churnlab"}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and here:  # relative import inside the package
                module = ".".join(here.split(".")[: -node.level] + ([module] if module else []))
            if module.split(".")[0] != "churnlab":
                continue
            found.add(module)
            for alias in node.names:  # `from churnlab.pkg import module`
                if module_file(f"{module}.{alias.name}"):
                    found.add(f"{module}.{alias.name}")
    return found


def closure(start: set[str]) -> set[Path]:
    """Every churnlab source file reachable from the modules ``start`` by imports."""
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # parent packages
        todo += imported_modules(ast.parse(module_file(name).read_text()), name)
    return {module_file(n) for n in seen}


def command_modules(cmd: str) -> set[str]:
    """The modules a ``churnlab`` sub-command imports: its handler in cli.py, the cli
    functions the handler calls, and cli's module-level imports (cli imports per command)."""
    match = re.search(r"churnlab\s+([\w-]+)", cmd)
    assert match, cmd
    cli = ast.parse((PACKAGE / "cli.py").read_text())
    functions = {n.name: n for n in cli.body if isinstance(n, ast.FunctionDef)}
    handler = functions[f"_{match.group(1).replace('-', '_')}"]
    called = {
        node.func.id
        for node in ast.walk(handler)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    top = [n for n in cli.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    found = imported_modules(handler) | imported_modules(ast.Module(top, []))
    for name in called & set(functions):
        found |= imported_modules(functions[name])
    return found


def stage_code(name: str) -> set[Path]:
    body = STAGES[name]
    start = command_modules(body["cmd"])
    for dep in body.get("deps") or []:
        if str(dep).startswith("notebooks/") and str(dep).endswith(".py"):
            start |= imported_modules(ast.parse((ROOT / dep).read_text()))
    files = closure(start) | {PACKAGE / "cli.py"}
    if any("report" in p.relative_to(PACKAGE).parts[:1] or p.stem == "report" for p in files):
        files |= {p for p in PACKAGE.rglob("templates/*") if p.is_file()}
    return files


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT).as_posix()
    return any(relative == d.rstrip("/") or relative.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_module_a_stage_runs_is_one_of_its_deps(name):
    deps = [str(d) for d in STAGES[name].get("deps") or []]
    missing = sorted(str(p.relative_to(ROOT)) for p in stage_code(name) if not covered(p, deps))
    assert missing == [], f"dvc.yaml stage '{name}' runs code it does not list in deps"


def test_the_closure_sees_lazy_imports_and_packages(tmp_path):
    """The check itself: a lazy import inside a function counts, and so does a package."""
    tree = ast.parse("def f():\n    from churnlab.model import load_model\n")
    assert imported_modules(tree) == {"churnlab.model"}
    files = closure({"churnlab.model"})
    assert PACKAGE / "model.py" in files and PACKAGE / "errors.py" in files
