"""Running a pipeline notebook as a DVC stage.

The runner binds the stage's params to the notebook (:mod:`churnlab.pipeline.binding`), runs
it with papermill on the project's kernel, and only when every cell succeeded replaces the
stage's outputs (:mod:`churnlab.pipeline.guard`). On failure the earlier outputs are put
back, and the executed notebook with its traceback is kept under ``.churnlab/failed/``.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from churnlab.config import project_root
from churnlab.errors import ChurnlabError
from churnlab.param_rules import check_params
from churnlab.pipeline.binding import (
    KERNEL_NAME,
    bind_parameters,
    declared_parameters,
    read_notebook,
    scrub_notebook,
)
from churnlab.pipeline.guard import WORK_DIR, OutputGuard, write_text
from churnlab.pipeline.kernel import StartedKernel
from churnlab.pipeline.pages import to_html
from churnlab.pipeline.phases import PhaseClock
from churnlab.pipeline.stages import Stage, check_unread_params, load_stage
from churnlab.secrets import redact, redact_tree, secret_values
from churnlab.tracking.promotion import promotion_output, record_no_promotion
from churnlab.tracking.runs import Outcome, Tracker, record_stage, tracked_stage
from churnlab.tracking.settings import load_settings


def _describe_failure(exc, notebook: Path, kept: Path) -> str:
    cell = exc.exec_count if exc.exec_count is not None else exc.cell_index
    first_line = next((line for line in (exc.source or "").splitlines() if line.strip()), "")
    return (
        f"{notebook}: cell In [{cell}] failed ({first_line.strip()[:80]!r}): "
        f"{exc.ename}: {exc.evalue}\n"
        f"  the executed notebook with the traceback is kept at {kept}"
    )


_STOP_WAIT = 10.0  # seconds a cell gets to stop after Ctrl-C before its kernel is killed


def _execute_interruptibly(kernel: StartedKernel, watch: Outcome | None, execute, *args, **kwargs):
    """``execute(*args, **kwargs)`` (papermill, on ``kernel``) in a worker thread, so Ctrl-C
    stops it cleanly, and so does a failure of ``watch`` (the stage's tracking, started in the
    background): a store that cannot be reached stops the notebook at once, not after it ran.

    In the main thread nbclient takes SIGINT over and shuts the kernel down while a cell
    still runs, and the kernel then prints a ZMQError traceback. Here Ctrl-C interrupts the
    cell (the kernel is killed if it has not stopped after ``_STOP_WAIT`` seconds), the cell
    fails as any failing cell does, and KeyboardInterrupt is raised.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a join broken by Ctrl-C misreports the thread

    def work():
        try:
            outcome["value"] = execute(*args, km=kernel.manager, **kwargs)
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="papermill", daemon=True).start()
    try:
        while not done.wait(0.2):
            if watch is not None and watch.failed():
                kernel.signal(signal.SIGKILL)  # the run cannot be recorded: stop it now
                done.wait(_STOP_WAIT)
                watch.result()  # raises the tracking error, the one to report
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # one Ctrl-C is enough
        try:
            kernel.signal(signal.SIGINT)
            if not done.wait(_STOP_WAIT):
                kernel.signal(signal.SIGKILL)
                done.wait(_STOP_WAIT)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# what writing the stage's page imports (nbconvert alone takes 0.5 s)
_PAGE_MODULES = ("nbconvert", "nbconvert.preprocessors", "bleach", "bleach.css_sanitizer")


def _import_in_background(modules: tuple[str, ...]) -> None:
    """Import ``modules`` in a thread while the runner only waits for the kernel; whoever
    imports one of them first waits for it to finish (Python's import lock), and an import
    that fails here fails again, with its message, where the module is used."""

    def work():
        for module in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(module)

    threading.Thread(target=work, name="preload", daemon=True).start()


def _start_kernel(root: Path, name: str) -> StartedKernel | None:
    """The stage's kernel, started before anything else so that its start and the
    notebook's imports overlap the runner's own work; None when the stage cannot be read
    (the checks that follow report why) or the kernel is not installed (reported where the
    notebook would run)."""
    from jupyter_client.kernelspec import NoSuchKernel

    try:
        notebook = load_stage(root, name, strict=False).notebook
    except ChurnlabError:
        return None
    try:
        settings = load_settings(root)
        # only the register stage's tracking works for seconds beside the notebook (the
        # champion and the challenger read, the model written); elsewhere it opens the store
        registers = settings.enabled and settings.register_stage == name
    except ChurnlabError:
        registers = False  # reported by the checks that follow
    try:
        return StartedKernel.start(KERNEL_NAME, root, root / notebook, spare_core=registers)
    except NoSuchKernel:
        return None


def run_stage(
    name: str, root: Path | None = None, overrides: dict | None = None, progress: bool | None = None
) -> Stage:
    """Run one notebook stage end to end; raise ChurnlabError on any failure."""
    clock = PhaseClock(name)
    clock.mark("runner start")
    root = root or project_root()
    kernel = _start_kernel(root, name)
    clock.mark("kernel started")
    try:
        return _run_on_kernel(kernel, name, root, overrides, progress, clock)
    finally:
        if kernel is not None:
            kernel.shutdown()
        clock.mark("kernel stopped")
        clock.write()


def _run_on_kernel(
    kernel: StartedKernel | None,
    name: str,
    root: Path,
    overrides: dict | None,
    progress: bool | None,
    clock: PhaseClock,
) -> Stage:
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    if kernel is None:  # the stage could not be read, or no kernel is installed
        check_unread_params(root)
        check_params(root, overrides)
        load_stage(root, name, overrides)
        raise ChurnlabError(
            f"no Jupyter kernel named '{KERNEL_NAME}': run `make setup` to install it"
        )
    check_unread_params(root)
    check_params(root, overrides)
    stage = load_stage(root, name, overrides)
    nb = read_notebook(root / stage.notebook)
    parameters = bind_parameters(stage, declared_parameters(nb, stage.notebook))
    missing_outs = [o for o in (stage.executed_path, stage.html_path) if o not in stage.outs]
    if missing_outs:
        raise ChurnlabError(f"dvc.yaml stage '{name}': outs must include {missing_outs}")
    clock.mark("params checked")
    if progress is None:
        progress = sys.stderr.isatty() and not os.environ.get("CI")
    running = root / WORK_DIR / "running" / f"{name}.ipynb"
    failed = root / WORK_DIR / "failed" / f"{name}.ipynb"
    running.parent.mkdir(parents=True, exist_ok=True)
    running.unlink(missing_ok=True)  # left by a run that was killed
    logging.getLogger("papermill").setLevel(logging.WARNING)
    print(
        f"[{name}] running {stage.notebook} on kernel '{KERNEL_NAME}'", file=sys.stderr, flush=True
    )
    tracking = Tracker.open_in_background(root)  # overlaps the notebook; joined after it ran
    promotion = promotion_output(root, stage)  # written by tracking, not by the notebook
    clock.mark("tracking started")
    started = time.perf_counter()
    secrets = secret_values(stage.values)
    # The guard encloses the stage run, so a failure to record the stage, up to the very last
    # write (the registry's aliases), puts the earlier outputs back.
    with OutputGuard(root, name, stage.outs), tracked_stage(root, stage, tracking) as pending:
        for out in stage.outs:
            (root / out).parent.mkdir(parents=True, exist_ok=True)
        _import_in_background(_PAGE_MODULES)  # the notebook runs in the kernel meanwhile
        try:
            executed = _execute_interruptibly(
                kernel,
                pending,
                papermill.execute_notebook,
                nb,
                str(running),
                parameters=parameters,
                kernel_name=KERNEL_NAME,
                language="python",
                cwd=str(root),
                start_timeout=120,
                progress_bar={"desc": f"[{name}]", "disable": not progress, "leave": False},
                request_save_on_cell_execute=True,
                on_cell_start=lambda **_: "first cell" in clock.marks or clock.mark("first cell"),
            )
            clock.mark("notebook done")
        except PapermillExecutionError as exc:
            failed.parent.mkdir(parents=True, exist_ok=True)
            if running.exists():
                kept = redact_tree(nbformat.read(running, as_version=4), secrets)
                write_text(failed, nbformat.writes(kept) + "\n")
                running.unlink()
            message = _describe_failure(exc, stage.notebook, failed)
            raise ChurnlabError(redact(message, secrets)) from None
        except OSError as exc:
            if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                # papermill saving the notebook after a cell: the file it writes is ours
                raise OSError(exc.errno, exc.strerror, str(running.relative_to(root))) from None
            raise
        finally:  # the executed notebook is in memory now, or the run failed
            running.unlink(missing_ok=True)
        not_written = [
            o
            for o in stage.outs
            if o not in (stage.executed_path, stage.html_path, promotion)
            and not (root / o).exists()
        ]
        if not_written:
            raise ChurnlabError(
                f"{stage.notebook}: finished but did not write {not_written} "
                f"(outs of stage '{name}' in dvc.yaml)"
            )
        clean = redact_tree(scrub_notebook(executed, parameters, stage.notebook), secrets)
        write_text(root / stage.executed_path, nbformat.writes(clean) + "\n")
        write_text(root / stage.html_path, to_html(clean))
        clock.mark("page written")
        # the stage's run (None: untracked); an unreachable store raises here, before any
        # output is replaced: inside the guard, a failure to record restores the outputs
        run = pending.result()
        if run is not None:
            record_stage(run, root, stage, clean)
        if promotion and not (root / promotion).exists():  # so that the output always exists
            record_no_promotion(root, promotion, run is not None, name)
    clock.mark("recorded")
    failed.unlink(missing_ok=True)
    print(
        f"[{name}] done in {time.perf_counter() - started:.1f} s: {stage.executed_path}, "
        f"{stage.html_path}",
        file=sys.stderr,
        flush=True,
    )
    return stage
