"""Running a pipeline notebook as a DVC stage.

``dvc.yaml`` is the one description of a stage: its notebook (the ``notebooks/*.py`` dep),
the param keys it reads and its outputs. The runner passes exactly those keys to the
notebook's ``parameters`` cell (``a.b`` becomes ``a_b``), runs it with papermill on the
project's kernel, and only when every cell succeeded replaces the stage's outputs. On failure
the earlier outputs are put back, and the executed notebook with its traceback is kept under
``.churnlab/failed/``.
"""

from __future__ import annotations

import copy
import errno
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from churnlab.config import get_key, interpolate, project_root, read_yaml
from churnlab.errors import ChurnlabError
from churnlab.secrets import redact, redact_tree, secret_values
from churnlab.tracking.settings import SETTINGS_FILE as TRACKING_SETTINGS

KERNEL_NAME = "churnlab"
WORK_DIR = ".churnlab"
HIDDEN_TAGS = ("parameters", "injected-parameters")
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL | re.IGNORECASE)
_STYLE = re.compile(r"<style\b[^>]*>.*?</style>", re.DOTALL | re.IGNORECASE)
_HEAD = re.compile(r"<head>\s*(<meta charset=[^>]*>)?", re.IGNORECASE)


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
    metrics: list[str]

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
    metrics = [interpolate(_out_path(o), merged, where) for o in stages[name].get("metrics") or []]
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
    from churnlab.config import load_param_files

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
            if not any(leaf == key or leaf.startswith(f"{key}.") for key in keys):
                raise ChurnlabError(
                    f"{file_name}: key '{leaf}' is read by no stage of dvc.yaml (a typo?)"
                )


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


# What an HTML output (a DataFrame, a styled table) may keep in a report: structure and
# text, no script, no event handler, no remote resource.
_SAFE_TAGS = frozenset(
    {
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "th",
        "td",
        "caption",
        "colgroup",
        "col",
        "div",
        "span",
        "p",
        "br",
        "hr",
        "b",
        "i",
        "em",
        "strong",
        "code",
        "pre",
        "small",
        "sub",
        "sup",
        "ul",
        "ol",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
    }
)
_SAFE_ATTRIBUTES = {
    "*": ["class", "title"],
    "th": ["colspan", "rowspan"],
    "td": ["colspan", "rowspan"],
}


def sanitize_outputs(nb):
    """A copy of ``nb`` whose outputs are safe to show: no stderr, no JavaScript, clean HTML.

    Markdown, in cells and in outputs, is cleaned when it is rendered (:func:`to_html`).
    """
    import bleach

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                continue
            data = output.get("data", {})
            for kind in [k for k in data if "javascript" in k or k.endswith("+json")]:
                del data[kind]
            if "text/html" in data:
                html = data["text/html"]
                html = _STYLE.sub("", "".join(html) if isinstance(html, list) else html)
                data["text/html"] = bleach.clean(
                    html, tags=_SAFE_TAGS, attributes=_SAFE_ATTRIBUTES, strip=True
                )
            kept.append(output)
        cell.outputs = kept
    return nb


# Rendered markdown keeps, beyond what outputs keep: links to the web, to other pages and
# within the page, images embedded as data: URIs (the only images the CSP lets a page load),
# heading anchors and table alignment. Never an event handler or a script URL.
_MARKDOWN_TAGS = _SAFE_TAGS | {"a", "img", "del", "s", "dl", "dt", "dd", "kbd"}
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_LINK_SCHEMES = frozenset({"", "http", "https", "mailto"})
_IMAGE_WITHOUT_SOURCE = re.compile(r"<img\b(?![^>]*\ssrc=)[^>]*>")


def _markdown_attribute(tag: str, name: str, value: str) -> bool:
    """Whether rendered markdown may keep the attribute ``name="value"`` on ``tag``."""
    from urllib.parse import urlsplit

    if name in ("class", "title"):
        return True
    if tag in ("th", "td"):
        return name in ("colspan", "rowspan", "style")  # style: text-align only (below)
    if tag in _HEADINGS:
        return name == "id"
    if tag == "a" and name == "href":
        return urlsplit(value.strip()).scheme.lower() in _LINK_SCHEMES
    if tag == "img":
        return name in ("alt", "width", "height") or (
            name == "src" and value.startswith("data:image/")
        )
    return False


def sanitize_markdown_html(html: str) -> str:
    """Rendered markdown with only the structure, text, links and embedded images of markdown.

    A markdown cell may hold raw HTML; it is the notebook's text, but a notebook (or the
    data its outputs print as markdown) is no reason to run code in a reader's browser.
    """
    import bleach
    from bleach.css_sanitizer import CSSSanitizer

    clean = bleach.clean(
        html,
        tags=_MARKDOWN_TAGS,
        attributes=_markdown_attribute,
        protocols=["http", "https", "mailto", "data"],  # data: only on img (above)
        css_sanitizer=CSSSanitizer(allowed_css_properties=["text-align"]),
        strip=True,
    )
    return _IMAGE_WITHOUT_SOURCE.sub("", clean)  # an image from elsewhere would show broken


# The same policy as the report pages (templates/_base.html): no script, nothing from the
# network; inline styles and data: images only.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def to_html(nb) -> str:
    """The report page: outputs only, no parameters, no stderr, nothing loaded from a CDN."""
    from jinja2 import pass_context
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
        mathjax_url="",
        require_js_url="",
        jquery_url="",
        mermaid_js_url="",
        widget_renderer_url="",
    )
    remove = TagRemovePreprocessor(remove_cell_tags=set(HIDDEN_TAGS), enabled=True)
    exporter.register_preprocessor(remove, enabled=True)
    render_markdown = exporter.markdown2html

    @pass_context
    def markdown2html(context, source):
        return sanitize_markdown_html(render_markdown(context, source))

    exporter.register_filter("markdown2html", markdown2html)
    body, _ = exporter.from_notebook_node(sanitize_outputs(nb))
    # The page needs no script: tables and static images only. The template's own
    # (require.js, MathJax, mermaid from a CDN) go; outputs were sanitized above. The CSP
    # forbids scripts anyway, should anything slip through.
    policy = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
    return _HEAD.sub(lambda head: f"{head.group()}\n{policy}", _SCRIPT.sub("", body), count=1)


def _write_text(path: Path, text: str) -> None:
    from churnlab.files import write_atomic

    write_atomic(path, text.encode())


def _check_writable(root: Path, outs: list[str]) -> None:
    """Fail before a run, not after it, when a stage could not write its outputs.

    Raises:
        PermissionError: naming the first folder (the output's own, or its nearest existing
            parent) that this process may not write.
    """
    for out in outs:
        folder = (root / out).parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable by this process", str(folder))


class _OutputGuard:
    """Moves a stage's existing outputs aside and puts them back unless the run succeeds."""

    def __init__(self, root: Path, stage: str, outs: list[str]):
        self.root = root
        self.outs = outs
        self.backup = root / WORK_DIR / "backup" / stage

    def __enter__(self):
        if self.backup.exists():  # a run killed earlier: its saved outputs come back first
            self._restore()
        _check_writable(self.root, self.outs)
        try:
            for out in self.outs:
                source = self.root / out
                if source.exists():
                    target = self.backup / out
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(source, target)
        except BaseException:  # one output cannot move (immutable): the others come back
            self._restore()
            raise
        return self

    def _restore(self):
        for out in self.outs:
            saved = self.backup / out
            if saved.exists():
                current = self.root / out
                if current.is_dir():
                    shutil.rmtree(current)
                elif current.exists():
                    current.unlink()
                current.parent.mkdir(parents=True, exist_ok=True)
                os.replace(saved, current)
        shutil.rmtree(self.backup, ignore_errors=True)

    def __exit__(self, kind, value, tb):
        if kind is None:
            shutil.rmtree(self.backup, ignore_errors=True)
        else:
            for out in self.outs:  # half-results of the failed run go
                current = self.root / out
                if current.is_dir():
                    shutil.rmtree(current)
                elif current.exists():
                    current.unlink()
            self._restore()
        return False


def _describe_failure(exc, notebook: Path, kept: Path) -> str:
    cell = exc.exec_count if exc.exec_count is not None else exc.cell_index
    first_line = next((line for line in (exc.source or "").splitlines() if line.strip()), "")
    return (
        f"{notebook}: cell In [{cell}] failed ({first_line.strip()[:80]!r}): "
        f"{exc.ename}: {exc.evalue}\n"
        f"  the executed notebook with the traceback is kept at {kept}"
    )


_STOP_WAIT = 10.0  # seconds a cell gets to stop after Ctrl-C before its kernel is killed


def _recording_kernel_manager(pids: list[int]):
    """A kernel manager class that notes the process id of each kernel it starts."""
    from jupyter_client.manager import AsyncKernelManager

    class RecordingKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kwargs):
            await super().start_kernel(**kwargs)
            pids.append(self.provisioner.pid)

    return RecordingKernelManager


def _signal_kernels(pids: list[int], number: int) -> None:
    for pid in pids:
        try:
            os.killpg(pid, number)  # jupyter_client starts each kernel in its own session
        except ProcessLookupError:
            pass


def _execute_interruptibly(execute, *args, **kwargs):
    """``execute(*args, **kwargs)`` (papermill) in a worker thread, so Ctrl-C stops it cleanly.

    In the main thread nbclient takes SIGINT over and shuts the kernel down while a cell
    still runs, and the kernel then prints a ZMQError traceback. Here Ctrl-C interrupts the
    cell (the kernel is killed if it has not stopped after ``_STOP_WAIT`` seconds), nbclient
    shuts the idle kernel down as after any failing cell, and KeyboardInterrupt is raised.
    """
    pids: list[int] = []
    outcome: dict[str, Any] = {}
    done = threading.Event()  # not Thread.join: a join broken by Ctrl-C misreports the thread

    def work():
        try:
            outcome["value"] = execute(
                *args, kernel_manager_class=_recording_kernel_manager(pids), **kwargs
            )
        except BaseException as exc:  # handed to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=work, name="papermill", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # one Ctrl-C is enough
        try:
            _signal_kernels(pids, signal.SIGINT)
            if not done.wait(_STOP_WAIT):
                _signal_kernels(pids, signal.SIGKILL)
                done.wait(_STOP_WAIT)
        finally:
            signal.signal(signal.SIGINT, previous)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def run_stage(
    name: str, root: Path | None = None, overrides: dict | None = None, progress: bool | None = None
) -> Stage:
    """Run one notebook stage end to end; raise ChurnlabError on any failure."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from churnlab.param_rules import check_params
    from churnlab.tracking.promotion import promotion_output, record_no_promotion
    from churnlab.tracking.runs import Tracker, record_stage, tracked_stage

    root = root or project_root()
    check_unread_params(root)
    check_params(root, overrides)
    stage = load_stage(root, name, overrides)
    nb = read_notebook(root / stage.notebook)
    parameters = bind_parameters(stage, declared_parameters(nb, stage.notebook))
    missing_outs = [o for o in (stage.executed_path, stage.html_path) if o not in stage.outs]
    if missing_outs:
        raise ChurnlabError(f"dvc.yaml stage '{name}': outs must include {missing_outs}")
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
    tracker = Tracker.open(root)  # an unreachable store stops us here, before any output moves
    promotion = promotion_output(root, stage)  # written by tracking, not by the notebook
    started = time.perf_counter()
    secrets = secret_values(stage.values)
    # The guard encloses the stage run, so a failure to record the stage, up to the very last
    # write (the registry's aliases), puts the earlier outputs back.
    with _OutputGuard(root, name, stage.outs), tracked_stage(root, stage, tracker) as run:
        for out in stage.outs:
            (root / out).parent.mkdir(parents=True, exist_ok=True)
        try:
            executed = _execute_interruptibly(
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
            )
        except PapermillExecutionError as exc:
            failed.parent.mkdir(parents=True, exist_ok=True)
            if running.exists():
                kept = redact_tree(nbformat.read(running, as_version=4), secrets)
                _write_text(failed, nbformat.writes(kept) + "\n")
                running.unlink()
            message = _describe_failure(exc, stage.notebook, failed)
            raise ChurnlabError(redact(message, secrets)) from None
        except OSError as exc:
            if exc.filename is None and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                # papermill saving the notebook after a cell: the file it writes is ours
                raise OSError(exc.errno, exc.strerror, str(running.relative_to(root))) from None
            raise
        except Exception as exc:
            if type(exc).__name__ == "NoSuchKernel":
                raise ChurnlabError(
                    f"no Jupyter kernel named '{KERNEL_NAME}': run `make setup` to install it"
                ) from None
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
        _write_text(root / stage.executed_path, nbformat.writes(clean) + "\n")
        _write_text(root / stage.html_path, to_html(clean))
        if run is not None:  # inside the guard: a failure to record restores the outputs
            record_stage(run, root, stage, clean)
        if promotion and not (root / promotion).exists():  # so that the output always exists
            record_no_promotion(root, promotion, run is not None, name)
    failed.unlink(missing_ok=True)
    print(
        f"[{name}] done in {time.perf_counter() - started:.1f} s: {stage.executed_path}, "
        f"{stage.html_path}",
        file=sys.stderr,
        flush=True,
    )
    return stage


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
