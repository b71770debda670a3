"""Loading params and resolving paths: the one way to do both."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from churnlab.errors import ChurnlabError

PARAMS_DIR = "params"
# libyaml's parser when PyYAML has it: the same values as yaml.SafeLoader, ten times faster
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# One process reads the same few files many times (every params file, dvc.yaml): each text
# is parsed once. Keyed on the text itself, so a file changed on disk is parsed again.
_PARSED: dict[str, Any] = {}


def project_root(start: Path | None = None) -> Path:
    """Return the nearest folder at or above ``start`` that holds ``dvc.yaml``.

    Raises:
        ChurnlabError: when no such folder exists.
    """
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / PARAMS_DIR).is_dir():
            return folder
    raise ChurnlabError(f"no churnlab project (dvc.yaml and params/) at or above {here}")


def read_yaml(path: Path) -> Any:
    """Read one YAML file, naming the file in any error."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ChurnlabError(f"{path}: file not found") from None
    if text not in _PARSED:
        try:
            parsed = yaml.load(text, Loader=_LOADER)
        except yaml.YAMLError as exc:
            raise ChurnlabError(f"{path}: not valid YAML: {exc}") from None
        if len(_PARSED) >= 64:  # a long-lived kernel or test session sees many versions
            _PARSED.clear()
        _PARSED[text] = parsed
    return copy.deepcopy(_PARSED[text])  # callers may change what they get


def load_param_files(root: Path) -> dict[str, dict]:
    """Return ``{relative file name: content}`` for every ``params/*.yaml``."""
    files = {}
    for path in sorted((root / PARAMS_DIR).glob("*.yaml")):
        content = read_yaml(path) or {}
        if not isinstance(content, dict):
            raise ChurnlabError(f"{path}: expected a mapping of sections at the top level")
        files[f"{PARAMS_DIR}/{path.name}"] = content
    return files


def get_key(tree: dict, dotted: str, where: str) -> Any:
    """Look up ``a.b.c`` in nested mappings.

    Raises:
        ChurnlabError: naming ``where`` and the first missing part of the key.
    """
    node: Any = tree
    for depth, part in enumerate(dotted.split(".")):
        if not isinstance(node, dict) or part not in node:
            prefix = ".".join(dotted.split(".")[: depth + 1])
            raise ChurnlabError(f"{where}: key '{dotted}' not found (no '{prefix}')")
        node = node[part]
    return node


def load_params(root: Path | None = None) -> dict[str, Any]:
    """Merge every params file into one mapping of top-level sections.

    Raises:
        ChurnlabError: when two files define the same section.
    """
    root = root or project_root()
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for name, content in load_param_files(root).items():
        for section, value in content.items():
            if section in merged:
                raise ChurnlabError(
                    f"{name}: section '{section}' is also defined in {origin[section]}"
                )
            merged[section] = value
            origin[section] = name
    return merged


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``.

    Lists stay values; a nested empty mapping is a value of its own.
    """
    if isinstance(tree, Mapping) and (tree or not prefix):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


_VAR = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


def interpolate(text: str, params: dict, where: str) -> str:
    """Replace DVC-style ``${a.b}`` references with values from ``params``."""
    return _VAR.sub(lambda m: str(get_key(params, m.group(1), where)), text)
