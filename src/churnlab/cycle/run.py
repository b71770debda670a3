"""One month of the continuous-training cycle: monitor, decide, retrain, promote, record.

``run_cycle`` does the steps in order and keeps them in a journal
(``churnlab.cycle.decisions``), each step's result written atomically before the next
starts, so that a cycle killed anywhere is finished by the next one: the retraining runs
again (DVC re-runs only what did not finish), a promotion is completed, and the month gets
exactly one decision line. A lock file keeps two cycles from running at once (the second
refuses). Nothing is recorded until it has happened: the line goes to the log last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from churnlab.config import get_key, load_params
from churnlab.cycle.decisions import (
    FORMAT,
    JOURNAL,
    LOCK,
    append_decision,
    clear_journal,
    decision_line,
    read_journal,
    read_log,
    write_journal,
)
from churnlab.cycle.rule import (
    CYCLE_FILE,
    RULE_VERSION,
    Evidence,
    RuleParams,
    decide,
    learnt_drift,
)
from churnlab.errors import ChurnlabError

KILL_AT = "CHURNLAB_CYCLE_KILL_AT"  # tests: SIGKILL the cycle at this step (a real kill)
Notify = Callable[[dict], str | None]  # a warning when the message did not get through


@dataclass(frozen=True)
class Decision:
    """A month's decision as recorded in the log (``record``), and whether this run made it
    (``already_done``: the month was in the log, nothing was changed)."""

    record: dict
    already_done: bool = False

    @property
    def month(self) -> str:
        return self.record["month"]

    @property
    def outcome(self) -> str:
        return self.record["outcome"]

    @property
    def rule(self) -> str:
        return self.record["rule"]


def _kill_point(step: str) -> None:
    """A test hook: the cycle is killed (SIGKILL, no clean-up) when it reaches ``step``."""
    if os.environ.get(KILL_AT) == step:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def cycle_lock(root: Path, month: str) -> Iterator[None]:
    """One cycle at a time: a second one refuses at once (it never interleaves).

    Raises:
        ChurnlabError: another cycle holds the lock, naming its month and process.
    """
    path = root / LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ChurnlabError(
                f"{LOCK}: another cycle is running ({holder}): wait for it to finish, then run "
                f"`churnlab cycle {month}` again (two cycles at once would interleave)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"month {month}, pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _send(notify: Notify | None, event: dict) -> str | None:
    """Tell ``notify`` (if any) about an event; a failing callable never fails the cycle.

    Returns:
        The warning when the message did not get through (what the notifier returned, or
        what it raised), for the month's decision line; None otherwise.
    """
    if notify is None:
        return None
    try:
        warning = notify(event)
    except Exception as exc:  # the cycle's work is done or recorded either way
        warning = f"notification of {event['event']} failed: {exc}"
        print(f"churnlab: warning: {warning}", file=sys.stderr)
    return warning if isinstance(warning, str) else None


def _sent(record: dict, warning: str | None) -> None:
    """Keep a notification's warning in the decision (``notifications``)."""
    record.setdefault("notifications", [])
    if warning:
        record["notifications"].append(warning)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _relative(root: Path, path: Path) -> str:
    return path.resolve().relative_to(root.resolve()).as_posix()


def _params_digest(params: dict) -> str:
    """The params the decision depends on, as one checksum."""
    used = {
        "cycle": params.get("cycle"),
        "monitor": {k: v for k, v in params.get("monitor", {}).items() if k != "simulate"},
        "gates": params.get("evaluate", {}).get("gates"),
    }
    return hashlib.sha256(json.dumps(used, sort_keys=True).encode()).hexdigest()


def _store_error(exc: BaseException, settings_uri: str, step: str) -> ChurnlabError:
    from churnlab.tracking.settings import display_uri, first_line

    return ChurnlabError(
        f"params/tracking.yaml: tracking.uri: the tracking store {display_uri(settings_uri)} "
        f"cannot be reached during the cycle's step '{step}' ({first_line(exc)}): nothing of "
        "this step was recorded; the steps done are kept in the journal: run the same "
        "`churnlab cycle` again when the store is back"
    )


@contextlib.contextmanager
def _store(root: Path, step: str) -> Iterator[None]:
    """Turn an unreachable tracking store into one clear error naming the step."""
    try:
        yield
    except ChurnlabError:
        raise
    except Exception as exc:
        from churnlab.tracking.settings import load_settings

        raise _store_error(exc, load_settings(root).uri, step) from None


def _months_in_window(month: str, window: int) -> list[str]:
    from churnlab.monitoring.months import add_months

    return [add_months(month, -i) for i in range(window - 1, -1, -1)]


def _check_labels(root: Path, month: str, monitor, verdicts: Path) -> None:
    """Labels may arrive only for months that were scored (the cycle's month or one with a
    verdict); labels of later months have not arrived as far as this cycle is concerned.

    Raises:
        ChurnlabError: a labels file of a month never scored, or of a month without a batch.
    """
    from churnlab.monitoring.months import SUFFIXES, month_file

    folder = root / monitor.labels
    if not folder.is_dir():
        return
    for path in sorted(folder.iterdir()):
        name = path.stem
        if path.suffix not in SUFFIXES or not (monitor.reference_month < name <= month):
            continue
        if month_file(root / monitor.batches, name, "the batch") is None:
            raise ChurnlabError(
                f"{monitor.labels}/{path.name}: labels of {name}, a month without a batch "
                f"({monitor.batches}/{name}.csv or .parquet): labels belong to a month's "
                "customers; put the batch there or remove the labels"
            )
        if name != month and not (verdicts / f"{name}.json").is_file():
            raise ChurnlabError(
                f"{monitor.labels}/{path.name}: labels of {name}, a month never scored (no "
                f"verdict {monitor.verdicts}/{name}.json): run `churnlab cycle {name}` (or "
                f"`churnlab monitor {name}`) before a later month"
            )


def _champion_facts(root: Path, champion, log: list[dict], today: date) -> dict:
    """The champion's test figures (from its run) and its age in days."""
    import mlflow

    from churnlab.tracking.settings import load_settings, store_lock

    settings = load_settings(root)
    client = mlflow.MlflowClient(settings.uri)
    with store_lock(settings.uri):
        metrics = client.get_run(champion.run_id).data.metrics
        created = client.get_model_version(champion.name, str(champion.version))
    registered = datetime.fromtimestamp(created.creation_timestamp / 1000, UTC).date()
    return {
        "version": champion.version,
        "run_id": champion.run_id,
        "roc_auc": metrics.get("test.roc_auc"),
        "recall": metrics.get("test.recall"),
        "age_days": _champion_age(champion.version, log, today, registered),
    }


def _champion_age(version: int, log: list[dict], today: date, registered: date) -> int:
    """Days since the champion was last put to the test: since the cycle that promoted it, or
    the last cycle whose challenger (trained on the newest data) it beat (dates from the
    cycle's clock), else since it was registered.

    A champion that has just beaten a model trained on the newest data is as good as a model
    retrained now can be, so the age limit starts again there; counting from its promotion
    would retrain every month once it is older than the limit, each time for nothing.
    """
    born = registered
    for line in log:
        if line["outcome"] in ("promoted", "kept champion") and (
            line.get("champion_after", {}).get("version") == version
        ):
            born = date.fromisoformat(line["date"])
    return max((today - born).days, 0)


def _gather(root: Path, month: str, params: dict, log: list[dict], today: date, notify):
    """Monitor the month (and re-judge the latest labelled month), then apply the rule.

    Returns:
        The decision as far as it is known before retraining, and the journal's extras.
    """
    from churnlab.monitoring.verdict import Monitor, MonitorParams, locate_month, monitor_month

    mp = MonitorParams.from_params(params)
    section = get_key(params, "cycle", CYCLE_FILE)
    verdicts = root / mp.verdicts
    locate_month(root, mp, month)  # a bad name, a month not after the reference, no batch
    _check_labels(root, month, mp, verdicts)
    with _store(root, "monitor"):
        monitor = Monitor.open(root)
    verdict, _ = monitor_month(monitor, month)
    window = _months_in_window(month, section["window"])
    labelled = []  # (month, verdict) of labelled months in the window, oldest first
    labels_used = []  # their labels files: what the decision was made on
    from churnlab.monitoring.months import month_file

    for name in window:
        labels = month_file(root / mp.labels, name, "the labels")
        if name <= mp.reference_month or labels is None:
            continue
        found = verdict if name == month else json.loads((verdicts / f"{name}.json").read_text())
        labelled.append((name, found))
        labels_used.append(
            {"month": name, "path": _relative(root, labels), "sha256": _sha256(labels)}
        )
    trainable = [name for name, v in labelled if v["usable_for_training"]]
    latest = trainable[-1] if trainable else None
    if latest is not None and latest != month:  # its labels may have come since it was judged
        latest_verdict, _ = monitor_month(monitor, latest)
        labelled = [(n, latest_verdict if n == latest else v) for n, v in labelled]
    else:
        latest_verdict = verdict if latest == month else None
    realised = (latest_verdict or {}).get("performance") or {}
    realised = realised.get("realised") or {}
    with _store(root, "decide"):
        champion = _champion_facts(root, monitor.champion, log, today)
    importance = monitor.importance
    drifted = tuple(
        c
        for c in ((verdict.get("drift") or {}).get("drifted_columns") or [])
        if importance.get(c, 0.0) >= mp.alert_importance
    )
    estimated = ((verdict.get("performance") or {}).get("estimated") or {}).get("recall_interval")
    learnt, learnt_month = learnt_drift(log, champion["version"])
    evidence = Evidence(
        month=month,
        quality_passed=bool(verdict["quality"]["passed"]),
        drifted_important=drifted,
        estimated_recall_high=estimated[1] if estimated else None,
        realised_month=latest,
        realised_roc_auc=realised.get("roc_auc"),
        realised_recall=realised.get("recall"),
        reference_roc_auc=champion["roc_auc"],
        reference_recall=champion["recall"],
        gate_recall=monitor.gate_recall,
        age_days=champion["age_days"],
        trainable_months=tuple(trainable),
        drift_learnt=learnt,
        drift_learnt_month=learnt_month,
    )
    outcome = decide(evidence, RuleParams.from_section(section))
    warning = None
    if not verdict["quality"]["passed"]:
        warning = _send(
            notify, _event("quality_failure", month, verdict["summary"], verdict=verdict)
        )
    elif verdict["alerts"]["any"]:
        warning = _send(notify, _event("drift_alert", month, verdict["summary"], verdict=verdict))
    record = {
        "format": FORMAT,
        "month": month,
        "date": today.isoformat(),
        "rule_version": RULE_VERSION,
        "inputs": {
            "batch": {"path": verdict["batch"]["path"], "sha256": verdict["batch"]["sha256"]},
            "labels": labels_used,
            "params_sha256": _params_digest(params),
            "verdict_status": verdict["status"],
        },
        "champion_before": {
            # versions, not run ids: the same months in a fresh store give the same bytes
            k: champion[k]
            for k in ("version", "roc_auc", "recall", "age_days")
        },
        "statistics": {
            "quality_passed": evidence.quality_passed,
            "drifted_important": list(drifted),
            "estimated_recall_high": evidence.estimated_recall_high,
            "realised_month": latest,
            "realised_roc_auc": evidence.realised_roc_auc,
            "realised_recall": evidence.realised_recall,
            "drift_learnt": list(learnt),
            "drift_learnt_month": learnt_month,
        },
        "checks": outcome.checks,
        "fired": outcome.fired,
        "rule": outcome.rule,
        "action": "retrain" if outcome.retrain else "keep",
        "outcome": "retraining" if outcome.retrain else "no retrain",
        "reason": outcome.reason,
        "training": {"months": trainable} if outcome.retrain else None,
        "promotion": None,
        "challenger": None,
        "champion_after": {"version": champion["version"]},
        "notifications": [warning] if warning else [],
    }
    return record


def _event(kind: str, month: str, summary: str, **numbers: Any) -> dict:
    verdict = numbers.pop("verdict", None)
    event = {"event": kind, "month": month, "summary": summary, **numbers}
    if verdict is not None:
        event["alerts"] = verdict["alerts"]
        event["report"] = "reports/monitoring.html"
    return event


def _rebuild_monitoring(root: Path) -> None:
    from churnlab.monitoring.page import write_monitoring_outputs

    write_monitoring_outputs(root)


def run_cycle(
    root: Path,
    month: str,
    *,
    clock: Callable[[], datetime] | None = None,
    notify: Notify | None = None,
) -> Decision:
    """Run the cycle for ``month`` (``YYYY-MM``): monitor, decide, retrain, promote, record.

    Idempotent: a month already in the decision log changes nothing and returns its
    decision. Resumable: a month left unfinished (killed) is finished first.

    Args:
        root: the project root.
        month: the month whose batch came in.
        clock: gives "now" (the champion's age is measured with it); the system clock when
            None.
        notify: called with an event dict on a drift alert, a quality failure, a retrain,
            a promotion and a kept champion; its failures only warn.

    Raises:
        ChurnlabError: one clear message: a bad month name, no batch, a month before the
            last one done, labels of a month never scored, an unreachable tracking store, a
            second cycle running.
    """
    from churnlab.monitoring.months import check_month

    root = Path(root)
    check_month(month)
    now = (clock or (lambda: datetime.now(UTC)))()
    with cycle_lock(root, month):
        journal = read_journal(root)
        if journal is not None and journal["month"] != month:
            print(
                f"[cycle] finishing {journal['month']} first (interrupted at step "
                f"'{journal['step']}')",
                file=sys.stderr,
            )
            _complete(root, journal["month"], now.date(), notify)
        return _complete(root, month, now.date(), notify)


def _complete(root: Path, month: str, today: date, notify: Notify | None) -> Decision:
    from churnlab.param_rules import check_params

    check_params(root)
    params = load_params(root)
    section = get_key(params, "cycle", CYCLE_FILE)
    log_path = root / section["log"]
    log = read_log(log_path)
    journal = read_journal(root)
    done = [line for line in log if line["month"] == month]
    if done:
        if journal is not None and journal["month"] == month:
            clear_journal(root)  # killed after the line was written: nothing left to do
        return Decision(done[-1], already_done=True)
    if log and month < log[-1]["month"]:
        raise ChurnlabError(
            f"{section['log']}: month {month} comes before {log[-1]['month']}, the last month "
            f"done: a cycle goes forward only; run the cycle for a month after "
            f"{log[-1]['month']}"
        )
    if journal is None or journal["month"] != month:
        record = _gather(root, month, params, log, today, notify)
        journal = {"month": month, "step": "decided", "record": record}
        write_journal(root, journal)
    record = journal["record"]
    if journal["step"] == "decided":
        if record["action"] == "retrain":
            _sent(
                record,
                _send(notify, _event("retrain", month, record["reason"], rule=record["rule"])),
            )
            from churnlab.cycle.retrain import write_training_table

            record["training"] = write_training_table(root, params, month, record)
            journal = {**journal, "step": "retraining", "record": record}
        else:
            journal = {**journal, "step": "recording", "record": record}
        write_journal(root, journal)
    if journal["step"] == "retraining":
        _kill_point("retraining")
        from churnlab.cycle.retrain import retrain

        challenger = retrain(root, params, record)
        journal = {**journal, "step": "trained", "challenger": challenger}
        write_journal(root, journal)
    if journal["step"] == "trained":
        from churnlab.cycle.retrain import compare

        with _store(root, "compare"):
            record = compare(root, params, record, journal["challenger"])
        journal = {**journal, "step": "promoting", "record": record}
        write_journal(root, journal)
    if journal["step"] == "promoting":
        if record["outcome"] == "promoted":
            from churnlab.cycle.retrain import promote

            with _store(root, "promote"):
                promote(root, record["challenger"]["version"])
            _kill_point("promoted")
        journal = {**journal, "step": "recording", "record": record}
        write_journal(root, journal)
    # The page and the last message before the line: a message that did not get through is
    # recorded with the month (a cycle killed here sends it again, and records it once).
    _rebuild_monitoring(root)
    if record["outcome"] == "promoted":
        _sent(
            record, _send(notify, _event("promotion", month, record["reason"], rule=record["rule"]))
        )
    elif record["action"] == "retrain" or record["rule"] != "none":
        _sent(
            record,
            _send(notify, _event("kept_champion", month, record["reason"], rule=record["rule"])),
        )
    append_decision(log_path, record)
    record = json.loads(decision_line(record))  # as the log holds it
    clear_journal(root)
    return Decision(record)


__all__ = ["JOURNAL", "Decision", "run_cycle"]
