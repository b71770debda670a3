"""A simulated year through the real cycle, in a scratch copy of the project.

``churnlab replay`` (``make replay``) copies the project (its files as git sees them, not its
data, store or decision log), points the copy's tracking at a store of its own, runs the
pipeline there for a first champion, writes a seeded year of months with the scenarios of
``params/replay.yaml`` (the format of ``monitor.simulate``; drawn, under ``draw_from:
unseen``, only from a share of the customers that the copy's pipeline left out, so that the
first champion's realised figures are its true level and the test split holds none of them)
and runs ``churnlab cycle`` for
each month in order, with the clock at the first day of the next month and the labels of a
month arriving ``label_lag`` months later. Beside the cycle, it scores every month with the
model in use and with the first champion, never retrained, so the page can show what
retraining bought. The user's work tree, tracking store and decision log are not touched;
only ``reports/replay.html``, the replay's decision log beside it and (when asked) the
acceptance block of ``bench/RESULTS.md`` are written.

The acceptance figures (issue 12): retraining fires within ``within_months`` of each change;
at most ``unneeded_retrains`` retrains no change called for, beyond those the age limit asks
for (:func:`unneeded_retrains`); after the retrain that answers a change, the realised ROC
AUC of the model in use on the following month is no more than ``roc_auc_tolerance`` below
its level before the first change (the first retrain that gave a new champion, from the
change on: a kept champion serves on unchanged); the whole replay takes at most
``max_minutes``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from churnlab.config import get_key, load_params
from churnlab.errors import ChurnlabError
from churnlab.monitoring.months import add_months

REPLAY_FILE = "params/replay.yaml"
PAGE_NAME = "replay.html"
DECISIONS_NAME = "replay-decisions.jsonl"  # the replay's decision log, beside its page
HOLDING = ".churnlab/replay/labels"  # in the copy: labels that have not arrived yet
START, END = "<!-- replay -->", "<!-- /replay -->"
# what a replay must not reach: the user's store, a switch that turns tracking off, and the
# webhook (the replay's messages are shown on its page, never sent to people)
ISOLATED = ("MLFLOW_TRACKING_URI", "CHURNLAB_TRACKING", "MLFLOW_TRACKING_TOKEN")


@dataclass(frozen=True)
class ReplayParams:
    """``params/replay.yaml``."""

    simulate: dict
    draw_from: str  # "unseen": customers the copy's pipeline leaves out; "all": every one
    unseen_share: float  # under "unseen": the share of the raw customers left out
    label_lag: int
    within_months: int
    unneeded_retrains: int
    roc_auc_tolerance: float
    max_minutes: float

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ReplayParams:
        section = get_key(dict(params), "replay", REPLAY_FILE)
        accept = section["acceptance"]
        return cls(
            simulate=dict(section["simulate"]),
            draw_from=str(section.get("draw_from", "all")),
            unseen_share=float(section.get("unseen_share", 0.5)),
            label_lag=int(section["label_lag"]),
            within_months=int(accept["within_months"]),
            unneeded_retrains=int(accept["unneeded_retrains"]),
            roc_auc_tolerance=float(accept["roc_auc_tolerance"]),
            max_minutes=float(accept["max_minutes"]),
        )

    @property
    def months(self) -> list[str]:
        start = str(self.simulate["start"])
        return [add_months(start, i) for i in range(int(self.simulate["months"]))]


# --- pure: what happened, and whether it passes ------------------------------------------


def change_months(scenarios: list[Mapping[str, Any]], months: list[str]) -> list[str]:
    """The months in which the simulated world changes: a scenario starts, or ends, inside
    the replay (a scenario from the first month is the world the replay starts in)."""
    changes = set()
    for item in scenarios:
        start = str(item["start"])
        changes.add(start)
        if item.get("months"):
            changes.add(add_months(start, int(item["months"])))
    return sorted(m for m in changes if months and months[0] < m <= months[-1])


def clock_for(month: str) -> datetime:
    """The cycle of a month runs on the first day of the next one (its batch is complete)."""
    following = add_months(month, 1)
    return datetime(int(following[:4]), int(following[5:]), 1, tzinfo=UTC)


def retrains(decisions: list[dict]) -> list[dict]:
    return [d for d in decisions if d["action"] == "retrain"]


def _active(item: Mapping[str, Any], month: str) -> bool:
    start = str(item["start"])
    end = add_months(start, int(item["months"])) if item.get("months") else "9999-12"
    return start <= month < end


def unneeded_retrains(
    decisions: list[dict], scenarios: list[Mapping[str, Any]], changes: list[str], settings
) -> list[str]:
    """Retrains that no change of the world called for, the age limit's aside: not within
    ``within_months`` of a change, and the champion in use had already learnt from every
    scenario at work in the month (its training months reach past the scenario's start; the
    first champion knows none). A persistent shift keeps calling for a retrain while the
    champion that was trained before it stays in use."""
    explained = {add_months(c, i) for c in changes for i in range(settings.within_months + 1)}
    promoted_in: dict[int, str] = {}  # version -> the month of the cycle that promoted it
    unneeded = []
    for d in decisions:
        version = d["champion_before"]["version"]
        aged = "max_age" in (d.get("fired") or [d["rule"]])
        if d["action"] == "retrain" and not aged and d["month"] not in explained:
            known = promoted_in.get(version)
            learnt_until = add_months(known, -settings.label_lag) if known else None
            unseen = [
                item
                for item in scenarios
                if _active(item, d["month"])
                and (learnt_until is None or str(item["start"]) > learnt_until)
            ]
            if not unseen:
                unneeded.append(d["month"])
        if d["outcome"] == "promoted":
            promoted_in[d["champion_after"]["version"]] = d["month"]
    return unneeded


def honest_roc_auc(entry: Mapping[str, Any]) -> float | None:
    """A month's realised ROC AUC of the model in use on the customers it never saw a copy
    of (``in_use_unseen``), where the replay measured it; else on the whole month.

    The months resample a few thousand customers, so a model trained on some of them has
    seen most of the next one's customers: on the whole month its figure is inflated.
    """
    return entry["in_use_unseen"] if "in_use_unseen" in entry else entry.get("in_use")


def acceptance(
    decisions: list[dict],
    scenarios: list[Mapping[str, Any]],
    months: list[str],
    roc_auc: Mapping[str, Mapping[str, float | None]],
    seconds: float,
    settings: ReplayParams,
) -> dict[str, Any]:
    """The acceptance figures of a replay, each with what it was held to and whether it
    passed.

    Args:
        decisions: the replay's decision log, month order.
        scenarios: the simulated scenarios (``replay.simulate.scenarios``).
        months: the replay's months.
        roc_auc: per month, ``{"in_use": ..., "never_retrained": ...}`` realised ROC AUC,
            and ``in_use_unseen`` (with ``unseen_customers``) where measured: the level
            before the changes and the figure after a retrain are then that one
            (:func:`honest_roc_auc`).
        seconds: the replay's wall time.
        settings: the replay's params.
    """
    changes = change_months(scenarios, months)
    fired = retrains(decisions)
    answered = []
    for change in changes:
        window = [add_months(change, i) for i in range(settings.within_months + 1)]
        first = next((d for d in fired if d["month"] in window), None)
        answered.append(
            {
                "change": change,
                "retrain_month": first["month"] if first else None,
                "rule": first["rule"] if first else None,
                "outcome": first["outcome"] if first else None,
                "passed": first is not None,
            }
        )
    unneeded = unneeded_retrains(decisions, scenarios, changes, settings)
    before = [
        honest_roc_auc(roc_auc[m])
        for m in roc_auc
        if (not changes or m < changes[0]) and honest_roc_auc(roc_auc[m]) is not None
    ]
    level = sum(before) / len(before) if before else None
    recovery = []
    for change in changes:
        # the retrain on the new months: the first that gave a new champion, from the change on
        promoted = next(
            (d for d in fired if d["month"] >= change and d["outcome"] == "promoted"), None
        )
        month = promoted["month"] if promoted else None
        after = add_months(month, 1) if month else None
        found = (roc_auc.get(after) or {}) if after else {}
        value = honest_roc_auc(found) if found else None
        gap = None if value is None or level is None else value - level
        recovery.append(
            {
                "change": change,
                "retrain_month": month,
                "month": after,
                "roc_auc": value,
                "customers": found.get("unseen_customers"),  # None: the whole month
                "whole_month": found.get("in_use"),
                "difference": gap,
                "passed": gap is not None and gap >= -settings.roc_auc_tolerance,
            }
        )
    minutes = seconds / 60
    return {
        "changes": answered,
        "unneeded": {
            "months": unneeded,
            "count": len(unneeded),
            "limit": settings.unneeded_retrains,
            "passed": len(unneeded) <= settings.unneeded_retrains,
        },
        "age_retrains": [d["month"] for d in fired if "max_age" in (d.get("fired") or [d["rule"]])],
        "pre_drift_roc_auc": level,
        "recovery": recovery,
        "tolerance": settings.roc_auc_tolerance,
        "minutes": minutes,
        "time_passed": minutes <= settings.max_minutes,
        "max_minutes": settings.max_minutes,
        "passed": all(a["passed"] for a in answered)
        and len(unneeded) <= settings.unneeded_retrains
        and all(r["passed"] for r in recovery)
        and minutes <= settings.max_minutes,
    }


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_markdown(figures: Mapping[str, Any], context: Mapping[str, Any]) -> str:
    """The acceptance block of ``bench/RESULTS.md``."""
    ok = {True: "pass", False: "FAIL"}
    lines = [
        f"### Replay: {context['months']} simulated months through the real cycle "
        f"({context['customers']:,} customers a month; {context['when']})",
        "",
        f"Machine: {context['machine']}. Customers drawn from: "
        f"{context.get('draw_from', 'all')}. The world changes in "
        f"{', '.join(c['change'] for c in figures['changes']) or 'no month'}; labels arrive "
        f"{context['label_lag']} month(s) late.",
        "",
        "| acceptance | held to | found | |",
        "| --- | --- | --- | --- |",
    ]
    for item in figures["changes"]:
        found = (
            f"retrain in {item['retrain_month']} (rule {item['rule']}, {item['outcome']})"
            if item["retrain_month"]
            else "no retrain"
        )
        lines.append(
            f"| retrain after the change of {item['change']} | within "
            f"{context['within_months']} month(s) | {found} | {ok[item['passed']]} |"
        )
    unneeded = figures["unneeded"]
    lines.append(
        f"| retrains no change called for (age limit aside) | at most {unneeded['limit']} | "
        f"{unneeded['count']} ({', '.join(unneeded['months']) or 'none'}; age-limit retrains: "
        f"{', '.join(figures['age_retrains']) or 'none'}) | {ok[unneeded['passed']]} |"
    )
    honest = any(item.get("customers") is not None for item in figures["recovery"])
    level_whom = ", on customers the model in use never saw" if honest else ""
    for item in figures["recovery"]:
        whom = (
            f" on the {item['customers']} customers it never saw a copy of; "
            f"{_num(item['whole_month'])} on the whole month"
            if item.get("customers") is not None
            else ""
        )
        found = (
            f"{_num(item['roc_auc'])} in {item['month']} ({item['difference']:+.3f}; new "
            f"champion of {item['retrain_month']}{whom})"
            if item["difference"] is not None
            else ("no new champion" if item["retrain_month"] is None else "n/a")
        )
        lines.append(
            f"| realised ROC AUC after the first new champion since {item['change']} | at most "
            f"{figures['tolerance']} below {_num(figures['pre_drift_roc_auc'])} (before the "
            f"first change{level_whom}) | {found} | {ok[item['passed']]} |"
        )
    lines.append(
        f"| replay time | at most {figures['max_minutes']:g} min | "
        f"{figures['minutes']:.1f} min | {ok[figures['time_passed']]} |"
    )
    lines += ["", f"All: {ok[figures['passed']]}. Page: `reports/replay.html`."]
    return "\n".join(lines)


def replace_block(body: str, text: str) -> str:
    """``body`` with the text between the replay markers replaced (appended when absent)."""
    block = f"{START}\n{text}\n{END}"
    if START in body and END in body:
        pattern = re.escape(START) + ".*?" + re.escape(END)
        return re.sub(pattern, lambda _: block, body, flags=re.S)
    return body.rstrip("\n") + "\n\n" + block + "\n"


# --- whom the months are drawn from ---------------------------------------------------------

DRAWN = {
    "unseen": "the customers the copy's pipeline left out (the first champion neither trained "
    "nor was tested on them)",
    "all": "every customer of the raw data, most of them the first champion's training customers",
}
ORIGIN = "__replay_origin__"  # a simulated customer's raw id, kept by the replay, never written


def pipeline_rows(raw_rows: int, share: float, sample_rows: int | None) -> int:
    """How many raw customers the copy's pipeline keeps (``prepare.sample_rows``) when
    ``share`` of them are left out for the months."""
    kept = max(round(raw_rows * (1 - share)), 20)
    return kept if sample_rows is None else min(int(sample_rows), kept)


def pool_rows(ids, seen) -> np.ndarray:
    """Positions of the customers whose id is not in ``seen`` (the ids of the copy's training
    and test splits): customers no model of the copy has seen, nor is tested on, whom the
    months are drawn from under ``unseen``."""
    known = set(map(str, seen))
    return np.flatnonzero(~pd.Series(ids).astype(str).isin(known).to_numpy())


def draw_months(
    raw: pd.DataFrame, typed: pd.DataFrame, spec, simulate: dict, rows: np.ndarray
) -> tuple[dict, dict, dict[str, str]]:
    """The replay's months (``churnlab.monitoring.simulate.simulate_year``, the same seed and
    scenarios) drawn from the customers at ``rows`` of the raw table only.

    Returns:
        The months (batch, labels) as ``simulate_year`` gives them, its ground truth, and the
        raw id each simulated customer was drawn from (simulated id -> raw id).
    """
    from churnlab.monitoring.simulate import simulate_year

    marked = raw.iloc[rows].reset_index(drop=True)
    marked[ORIGIN] = marked[spec.id_column].astype(str)
    months, truth = simulate_year(marked, typed.iloc[rows].reset_index(drop=True), spec, simulate)
    origins: dict[str, str] = {}
    clean = {}
    for month, (batch, labels) in months.items():
        origins.update(zip(batch[spec.id_column], batch[ORIGIN], strict=True))
        clean[month] = (batch.drop(columns=[ORIGIN]), labels)
    return clean, {**truth, "customers_drawn_from": len(rows)}, origins


def seen_origins(training_ids, origins: Mapping[str, str]) -> frozenset[str]:
    """The raw customers a model has seen: its training ids, a simulated one as its origin."""
    return frozenset(origins.get(i, i) for i in map(str, training_ids))


# --- the scratch copy ----------------------------------------------------------------------


def _set_param(root: Path, file_name: str, dotted: str, value: Any) -> None:
    path = root / file_name
    content = yaml.safe_load(path.read_text()) or {}
    node = content
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    node[last] = value
    path.write_text(yaml.safe_dump(content, sort_keys=False, allow_unicode=True))


@contextlib.contextmanager
def isolated_environment(tools: Path) -> Iterator[None]:
    """This process's environment without the user's store or switches, the project's
    tools first on PATH (the copy has no .venv of its own); restored afterwards."""
    saved = dict(os.environ)
    for name in ISOLATED:
        os.environ.pop(name, None)
    os.environ["PATH"] = f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.update(DVC_NO_ANALYTICS="1", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def prepare_copy(root: Path, scratch: Path, settings: ReplayParams, params: dict) -> None:
    """The scratch project: the project's files, a store of its own, the replay's months in
    place of the user's, and no decision, verdict or month of the user's."""
    from churnlab.pipeline.workspace import commit_all, copy_project

    copy_project(root, scratch)
    own = root / "data" / "own"  # the user's own table is DVC's, not git's: not copied
    if own.is_dir():
        shutil.copytree(own, scratch / "data" / "own", dirs_exist_ok=True)
    monitor = params["monitor"]
    for folder in (monitor["batches"], monitor["labels"], monitor["verdicts"], "data/cycle"):
        for path in (scratch / folder).glob("*"):
            if path.name != "README.md":
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    (scratch / get_key(params, "cycle.log", "params/cycle.yaml")).unlink(missing_ok=True)
    _set_param(scratch, "params/monitor.yaml", "monitor.simulate", settings.simulate)
    _set_param(
        scratch, "params/tracking.yaml", "tracking.uri", f"sqlite:///{scratch / 'mlflow.db'}"
    )
    _set_param(scratch, "params/tracking.yaml", "tracking.enabled", True)
    commit_all(scratch, author="replay", message="the project, for a replay")


def leave_customers_out(scratch: Path, settings: ReplayParams, spec, tools: Path, log: Path):
    """Keep ``unseen_share`` of the raw customers out of the copy's pipeline (a seeded
    ``prepare.sample_rows``): the first champion neither trains nor is tested on them, so
    the months drawn from them are new customers to it, and the test split holds none of
    the customers the months copy (the promotion's test-split check stays honest)."""
    from churnlab.data import read_table

    _run([str(tools / "dvc"), "repro", "-q", "fetch"], scratch, log, "the fetch stage")
    params = load_params(scratch)
    raw = read_table(scratch / get_key(params, "paths.raw", "params/paths.yaml"))
    current = (params.get("prepare") or {}).get("sample_rows")
    kept = pipeline_rows(len(raw), settings.unseen_share, current)
    _set_param(scratch, "params/prepare.yaml", "prepare.sample_rows", kept)
    from churnlab.pipeline.workspace import commit_all

    commit_all(scratch, author="replay", message=f"the pipeline keeps {kept} customers")


def _run(command: list[str], cwd: Path, log: Path, what: str) -> None:
    with open(log, "a") as handle:
        handle.write(f"$ {' '.join(command)}\n")
        handle.flush()
        proc = subprocess.run(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text().strip().splitlines()[-1:] or [""]
        raise ChurnlabError(
            f"{log}: {what} failed in the replay's copy (exit {proc.returncode}): "
            f"{tail[0][:300]}; the project itself is unchanged"
        )


def user_cache(root: Path, tools: Path) -> Path | None:
    """The DVC cache of the project at ``root`` (``dvc cache dir``, read only), if any."""
    found = subprocess.run(
        [str(tools / "dvc"), "cache", "dir"], cwd=root, capture_output=True, text=True
    )
    folder = Path(found.stdout.strip()) if found.returncode == 0 else None
    return folder if folder is not None and (folder / "files").is_dir() else None


def reuse_outputs(cache: Path | None, scratch: Path, tools: Path, log: Path) -> bool:
    """Bring the project's own pipeline outputs into the copy from its DVC cache.

    The copy's ``dvc.lock`` is the project's (its files are copied as they are), so the
    outputs that lock names are the ones the project has run: ``dvc pull`` from the
    project's cache (a local remote of the copy; the cache is only read) puts them in place,
    and the copy's ``dvc repro`` runs only what is not current. An object the cache lacks
    (a project never run, or changed since) is left to ``dvc repro``.

    Returns:
        Whether every output was found.
    """
    if cache is None:
        return False
    dvc = str(tools / "dvc")
    with open(log, "a") as handle:
        for command in (
            [dvc, "remote", "add", "--local", "-f", "project_cache", str(cache)],
            # the stages' outputs only: data the user versioned (months, labels) stays out
            [dvc, "pull", "-q", "-r", "project_cache", "dvc.yaml"],
        ):
            handle.write(f"$ {' '.join(command)}\n")
            handle.flush()
            done = subprocess.run(command, cwd=scratch, stdout=handle, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                return False
    return True


def has_champion(scratch: Path) -> bool:
    """Whether the copy's own store has a champion (its register stage ran there)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from churnlab.tracking.settings import load_settings

    settings = load_settings(scratch)
    try:
        mlflow.MlflowClient(settings.uri).get_model_version_by_alias(
            settings.registered_model, "champion"
        )
    except MlflowException:
        return False
    return True


# --- scoring the months ----------------------------------------------------------------


def month_scores(champion, batch: Path, spec, fill_missing: dict) -> dict[str, float] | None:
    """A model's scores of a month's customers by id; None when the month cannot be scored
    (a column missing: the month failed data quality)."""
    from churnlab.data import read_table
    from churnlab.monitoring.quality import type_month

    typed = type_month(read_table(batch), spec)
    if any(c not in typed.columns for c in champion.columns):
        return None
    for name, value in fill_missing.items():
        if name in typed.columns:
            typed[name] = typed[name].fillna(float(value))
    scores = champion.scores(typed)
    return dict(zip(typed[spec.id_column].astype(str), scores.tolist(), strict=True))


def realised_roc_auc(scores: dict[str, float] | None, ids, churned) -> float | None:
    """ROC AUC of ``scores`` on the labelled customers (None: no scores, or one class)."""
    from sklearn.metrics import roc_auc_score

    if scores is None:
        return None
    pairs = [(scores[i], c) for i, c in zip(map(str, ids), churned, strict=True) if i in scores]
    truth = [c for _, c in pairs]
    if len(set(truth)) < 2:
        return None
    return float(roc_auc_score(truth, [s for s, _ in pairs]))


def unseen_roc_auc(
    scores: dict[str, float] | None, ids, churned, origins: Mapping[str, str], seen
) -> tuple[float | None, int]:
    """ROC AUC of ``scores`` on the labelled customers drawn from raw customers outside
    ``seen`` (what the model was trained on), and how many there were."""
    keep = [
        (i, c) for i, c in zip(map(str, ids), churned, strict=True) if origins.get(i, i) not in seen
    ]
    value = realised_roc_auc(scores, [i for i, _ in keep], [c for _, c in keep]) if keep else None
    return value, len(keep)


# --- the replay ------------------------------------------------------------------------


def run_replay(root: Path, scratch: Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the replay in ``scratch`` (an empty folder) for the project at ``root``.

    Returns:
        Everything the page and the acceptance block show.

    Raises:
        ChurnlabError: a step that failed in the copy (the project itself is unchanged).
    """
    from churnlab.cycle.decisions import read_log
    from churnlab.cycle.run import run_cycle
    from churnlab.data import ID_COLUMN, TableSpec, read_table, validate_table
    from churnlab.monitoring.champion import load_champion
    from churnlab.monitoring.months import month_file, read_labels
    from churnlab.monitoring.quality import type_month
    from churnlab.monitoring.simulate import scenarios_from_params, write_year
    from churnlab.param_rules import check_params

    started = time.perf_counter()
    check_params(root)
    params = load_params(root)
    settings = ReplayParams.from_params(params)
    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    try:  # the scenarios' columns and categories, before minutes are spent on the copy
        scenarios_from_params(settings.simulate.get("scenarios") or [], spec)
    except ChurnlabError as exc:
        raise ChurnlabError(
            f"{REPLAY_FILE}: replay.simulate: {str(exc).split(': ', 2)[-1]}"
        ) from None
    tools = Path(sys.executable).parent
    log = scratch / ".churnlab" / "replay" / "commands.log"
    months = settings.months
    events: list[dict] = []
    scored: dict[str, dict[str, Any]] = {}
    with isolated_environment(tools):
        echo(f"[replay] copying the project to {scratch}")
        prepare_copy(root, scratch, settings, params)
        log.parent.mkdir(parents=True, exist_ok=True)
        tick = time.perf_counter()
        reused = reuse_outputs(user_cache(root, tools), scratch, tools, log)
        echo(
            "[replay] the pipeline in the copy: a first champion (dvc repro; the project's "
            f"outputs {'reused from its DVC cache' if reused else 'not all in its DVC cache'})"
        )
        if settings.draw_from == "unseen":
            leave_customers_out(scratch, settings, spec, tools, log)
        _run([str(tools / "dvc"), "repro", "-q"], scratch, log, "the first pipeline run")
        if not has_champion(scratch):  # every stage was current: register in the copy's store
            from churnlab.tracking.settings import load_settings

            stage = load_settings(scratch).register_stage
            _run(
                [str(tools / "dvc"), "repro", "-q", "-f", "-s", stage],
                scratch,
                log,
                f"the {stage} stage (registering the first champion)",
            )
        echo(f"[replay] the first champion in {time.perf_counter() - tick:.0f} s")
        copy_params = load_params(scratch)
        first = current = load_champion(scratch)
        source = scratch / get_key(copy_params, "paths.raw", "params/paths.yaml")
        raw = read_table(source)
        typed = validate_table(raw, spec, str(source))
        rows = np.arange(len(raw))
        if settings.draw_from == "unseen":
            splits = [
                pd.read_parquet(scratch / get_key(copy_params, key, "params/paths.yaml"))
                for key in ("paths.train", "paths.test")
            ]
            seen = pd.concat([s[ID_COLUMN] for s in splits]).astype(str)
            rows = pool_rows(typed[spec.id_column], seen)
        echo(
            f"[replay] {len(months)} months from {months[0]}, drawn from {len(rows):,} "
            f"customers ({settings.draw_from})"
        )
        drawn, truth, origins = draw_months(raw, typed, spec, settings.simulate, rows)
        suffix = f".{settings.simulate['format']}"
        write_year(
            drawn,
            truth,
            scratch / copy_params["monitor"]["batches"],
            scratch / copy_params["monitor"]["labels"],
            suffix,
        )
        batches = scratch / copy_params["monitor"]["batches"]
        labels = scratch / copy_params["monitor"]["labels"]
        holding = scratch / HOLDING
        holding.mkdir(parents=True, exist_ok=True)
        for path in labels.glob("*"):
            if path.name != "README.md":
                shutil.move(str(path), holding / path.name)
        fill = (copy_params.get("prepare") or {}).get("fill_missing") or {}
        for month in months:
            for arrived in months:  # labels of months at least label_lag months back
                if arrived <= add_months(month, -settings.label_lag):
                    found = month_file(holding, arrived, "the labels")
                    if found is not None and not (labels / found.name).exists():
                        shutil.copy2(found, labels / found.name)
            batch = month_file(batches, month, "the batch")
            scored[month] = {
                "version": current.version,
                "in_use": month_scores(current, batch, spec, fill),
                "never_retrained": month_scores(first, batch, spec, fill),
                "seen": seen_origins(current.training_ids, origins),
            }
            tick = time.perf_counter()
            decision = run_cycle(
                scratch,
                month,
                clock=lambda m=month: clock_for(m),
                notify=lambda event, m=month: events.append({**event, "cycle": m}),
            )
            record = decision.record
            echo(
                f"[replay] {month}: {record['outcome']} (rule {record['rule']}; v"
                f"{record['champion_before']['version']} -> v"
                f"{record['champion_after']['version']}; "
                f"{time.perf_counter() - tick:.0f} s)"
            )
            if record["champion_after"]["version"] != current.version:
                current = load_champion(scratch)
        decisions = read_log(scratch / get_key(copy_params, "cycle.log", "params/cycle.yaml"))
        roc_auc = {}
        for month in months:
            found = month_file(holding, month, "the labels")
            batch = month_file(batches, month, "the batch")
            if found is None:
                roc_auc[month] = {"in_use": None, "never_retrained": None}
                continue
            ids = type_month(read_table(batch), spec)[spec.id_column]
            truth = read_labels(found, spec, ids)
            roc_auc[month] = {
                key: realised_roc_auc(scored[month][key], truth.ids, truth.churned)
                for key in ("in_use", "never_retrained")
            }
            # the honest figure of a retrained model: the customers it never saw a copy of
            value, count = unseen_roc_auc(
                scored[month]["in_use"], truth.ids, truth.churned, origins, scored[month]["seen"]
            )
            roc_auc[month].update(in_use_unseen=value, unseen_customers=count)
        log_bytes = (scratch / get_key(copy_params, "cycle.log", "params/cycle.yaml")).read_bytes()
    seconds = time.perf_counter() - started
    scenarios = settings.simulate.get("scenarios") or []
    changes = change_months(scenarios, months)
    figures = acceptance(decisions, scenarios, months, roc_auc, seconds, settings)
    return {
        "settings": settings,
        "months": months,
        "changes": changes,
        "scenarios": settings.simulate.get("scenarios") or [],
        "decisions": decisions,
        "in_use": {m: scored[m]["version"] for m in months},
        "first_version": first.version,
        "roc_auc": roc_auc,
        "events": events,
        "figures": figures,
        "seconds": seconds,
        "log_bytes": log_bytes,
    }
