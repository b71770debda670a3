"""What a pipeline notebook calls before its parameters cell.

A notebook runs two ways: headless, by ``churnlab run STAGE`` from the project root with its
parameters injected by papermill; and by a person in JupyterLab, whose kernel starts in the
notebook's own folder (``notebooks/``) with nothing injected. :func:`stage_params` makes the
second behave like the first: it finds the project, works from its root (so the stage's
relative paths resolve as they do under the runner) and gives the parameters cell its
defaults from ``params/``, read through the same stage model the runner uses. So the values
live in ``params/`` only, and a person changes data or settings there, never in a notebook.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from churnlab.config import get_key, project_root
from churnlab.errors import ChurnlabError
from churnlab.param_rules import check_params
from churnlab.pipeline.stages import load_stage


def stage_params(stage: str, start: Path | None = None) -> Callable[[str], Any]:
    """Work from the project root and return ``param(key)`` for the stage's params.

    Args:
        stage: the ``dvc.yaml`` stage the notebook belongs to.
        start: where to look for the project (default: the working folder and its parents).

    Returns:
        ``param("paths.raw")`` gives the value of a key the stage reads, from ``params/``;
        a key inside a section the stage reads whole (``explore.bands``) works too.

    Raises:
        ChurnlabError: no project at or above ``start``, an unknown stage, or (from
            ``param``) a key the stage does not declare in ``dvc.yaml``.
    """
    root = project_root(start)
    check_params(root)  # a wrong param fails here, in words, as it does under the runner
    # JupyterLab starts the kernel in notebooks/; every path in params/ is relative to the
    # project root, as it is for the runner, which starts the kernel there.
    os.chdir(root)
    loaded = load_stage(root, stage)

    def param(key: str) -> Any:
        for declared, value in loaded.values.items():
            if key == declared:
                return copy.deepcopy(value)
            if key.startswith(f"{declared}.") and isinstance(value, dict):
                where = f"{loaded.files[declared]} (notebook of stage '{stage}')"
                return copy.deepcopy(get_key(value, key[len(declared) + 1 :], where))
        raise ChurnlabError(
            f"notebook of stage '{stage}': param '{key}' is not read by the stage "
            f"(add it to the stage's params in dvc.yaml, or fix the name)"
        )

    return param
