"""The model of ``dvc.yaml``: its stages, the param keys each reads, its outputs.

``dvc.yaml`` is the one description of a stage: its notebook (the ``notebooks/*.py`` dep),
the param keys it reads and its outputs. This module reads it and nothing else: the report,
the notebooks' ``param()`` and the runner share it, and it imports nothing that executes.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from churnlab.config import get_key, interpolate, load_param_files, read_yaml
from churnlab.errors import ChurnlabError
from churnlab.param_rules import COMMAND_SECTIONS
from churnlab.tracking.settings import SETTINGS_FILE as TRACKING_SETTINGS


@dataclass
class Stage:
    """One notebook stage of ``dvc.yaml``, with ``${...}`` resolved."""

    name: str
    notebook: Path
    values: dict[str, Any]  # param key as declared in dvc.yaml -> value
    files: dict[str, str]  # param key -> the params file it comes from
    outs: list[str]  # outs, metrics and plots
    report_dir: str
    unread: list[str]  # override keys the stage does not read
    deps: list[str]
    metrics: list[str]  # files whose numbers MLflow records (DVC's metrics and the rest)

    @property
    def executed_path(self) -> str:
        return f"{self.report_dir}/{self.notebook.stem}.ipynb"

    @property
    def html_path(self) -> str:
        return f"{self.report_dir}/{self.notebook.stem}.html"


def parameter_name(key: str) -> str:
    """The notebook parameter for a param key: ``train.cv_folds`` -> ``train_cv_folds``."""
    return key.replace(".", "_").replace("-", "_")


def _out_path(entry: Any) -> str:
    return next(iter(entry)) if isinstance(entry, dict) else str(entry)


def _is_numbers_file(entry: Any, merged: dict, where: str) -> bool:
    """A JSON out kept in git (``cache: false``): numbers DVC does not read as metrics (only
    the headline file is, to keep ``dvc exp show`` narrow), which MLflow records all the same."""
    props = next(iter(entry.values())) if isinstance(entry, dict) else {}
    path = interpolate(_out_path(entry), merged, where)
    return path.endswith(".json") and (props or {}).get("cache") is False


def _set_nested(tree: dict, dotted: str, value: Any, where: str) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        if not isinstance(tree.get(part), dict):
            raise ChurnlabError(f"{where}: '{part}' is not a mapping in params")
        tree = tree[part]
    if last not in tree:
        raise ChurnlabError(f"{where}: no such key in params (a typo?)")
    tree[last] = value


def load_stage(
    root: Path,
    name: str,
    overrides: dict[str, Any] | None = None,
    strict: bool = True,
    notebook: bool = True,
) -> Stage:
    """Read stage ``name`` from ``dvc.yaml`` and collect its parameters from ``params/``.

    Args:
        root: the project root.
        name: the stage name.
        overrides: ``{"file:key" or "key": value}`` replacing param values (profiles, tests);
            a key may reach into a param that is a mapping (``train.gradient_boosting.max_iter``).
        strict: raise when an override is not read by this stage (off for profiles, which
            hold keys for several stages).
        notebook: the stage runs a notebook (``churnlab fetch`` and ``report`` do not).

    Raises:
        ChurnlabError: an unknown stage, a stage without a notebook dep, a missing key.
    """
    pipeline = read_yaml(root / "dvc.yaml") or {}
    stages = pipeline.get("stages") or {}
    if name not in stages:
        raise ChurnlabError(f"dvc.yaml: no stage '{name}'; stages: {sorted(stages)}")
    files: dict[str, dict] = {}
    for entry in pipeline.get("vars") or []:
        if isinstance(entry, str):
            files[entry] = read_yaml(root / entry) or {}
    params_by_file: dict[str, list[str]] = {}
    for entry in stages[name].get("params") or []:
        if isinstance(entry, dict):
            for file_name, keys in entry.items():
                params_by_file.setdefault(file_name, []).extend(keys)
        else:
            params_by_file.setdefault("params.yaml", []).append(entry)
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    key_files: dict[str, str] = {}
    for file_name, keys in params_by_file.items():
        content = files.get(file_name)
        if content is None:
            content = files[file_name] = read_yaml(root / file_name) or {}
        for key in keys:
            value = copy.deepcopy(get_key(content, key, file_name))
            for override in sorted(overrides):
                dotted = override.split(":", 1)[1] if ":" in override else override
                if override.startswith(f"{file_name}:") or ":" not in override:
                    if dotted == key:
                        value = overrides.pop(override)
                    elif dotted.startswith(f"{key}.") and isinstance(value, dict):
                        _set_nested(
                            value,
                            dotted[len(key) + 1 :],
                            overrides.pop(override),
                            f"{file_name}:{dotted}",
                        )
            values[key] = value
            key_files[key] = file_name
    if overrides and strict:
        raise ChurnlabError(
            f"stage '{name}' does not read param(s) {sorted(overrides)} (dvc.yaml params)"
        )
    merged = {k: v for content in files.values() for k, v in content.items()}
    where = f"dvc.yaml stage '{name}'"
    deps = [interpolate(str(d), merged, where) for d in stages[name].get("deps") or []]
    notebooks = [d for d in deps if d.startswith("notebooks/") and d.endswith(".py")]
    if len(notebooks) != int(notebook):
        raise ChurnlabError(f"{where}: expected one notebooks/*.py dep, found {notebooks}")
    outs = [
        interpolate(_out_path(o), merged, where)
        for kind in ("outs", "metrics", "plots")
        for o in stages[name].get(kind) or []
    ]
    metrics = [
        interpolate(_out_path(o), merged, where)
        for kind in ("metrics", "outs")
        for o in stages[name].get(kind) or []
        if kind == "metrics" or _is_numbers_file(o, merged, where)
    ]
    report_dir = interpolate("${paths.reports}", merged, where)
    return Stage(
        name,
        Path(notebooks[0]) if notebooks else None,
        values,
        key_files,
        outs,
        report_dir,
        sorted(overrides),
        deps,
        metrics,
    )


def _leaf_keys(tree: Any, prefix: str = "") -> list[str]:
    if not isinstance(tree, dict) or not tree:
        return [prefix]
    return [
        key
        for name, sub in tree.items()
        for key in _leaf_keys(sub, f"{prefix}.{name}" if prefix else str(name))
    ]


def check_unread_params(root: Path) -> None:
    """Every key in ``params/*.yaml`` must be read by some stage of ``dvc.yaml``.

    A key no stage reads is almost always a typo (``train.famliy``) that would otherwise be
    ignored without a word, as papermill and ``dvc exp run -S`` do.

    Raises:
        ChurnlabError: naming the file and the key.
    """
    pipeline = read_yaml(root / "dvc.yaml") or {}
    declared: dict[str, set[str]] = {}
    for body in (pipeline.get("stages") or {}).values():
        for entry in body.get("params") or []:
            if isinstance(entry, dict):
                for file_name, keys in entry.items():
                    declared.setdefault(file_name, set()).update(keys)
    for file_name, content in load_param_files(root).items():
        if file_name in (pipeline.get("vars") or []):
            continue  # paths: read by dvc.yaml itself
        if file_name == TRACKING_SETTINGS:
            continue  # how runs are recorded, not an input of any stage: checked on its own
        keys = declared.get(file_name, set())
        for leaf in _leaf_keys(content):
            if leaf.split(".")[0] in COMMAND_SECTIONS:
                continue  # read by a command; its rule refuses unknown keys
            if not any(leaf == key or leaf.startswith(f"{key}.") for key in keys):
                raise ChurnlabError(
                    f"{file_name}: key '{leaf}' is read by no stage of dvc.yaml (a typo?)"
                )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (``file:key=value`` too); values are parsed as YAML."""
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ChurnlabError(f"--set {pair!r}: expected KEY=VALUE")
        result[key.strip()] = yaml.safe_load(value)
    return result


def notebook_stages(root: Path) -> list[str]:
    """Names of the ``dvc.yaml`` stages that run a notebook, in pipeline order."""
    stages = (read_yaml(root / "dvc.yaml") or {}).get("stages") or {}
    return [
        name
        for name, body in stages.items()
        if re.match(r"(\S*/)?churnlab run ", str(body.get("cmd", "")))
    ]
