"""The decision log (``cycle.log``, JSON lines, committed) and the cycle's journal.

The log is append-only: each month's decision is one line, written once, after everything
it records happened; a line is key-sorted JSON without time stamps of the machine (only the
cycle's own date), so the same inputs give the same bytes. The journal
(``.churnlab/cycle/journal.json``) holds the steps of the month in progress, so a cycle
killed anywhere is finished by the next one. Both are replaced atomically (the whole file
through a temporary file), so a reader never sees half a line.
"""

from __future__ import annotations

import json
from pathlib import Path

from churnlab.errors import ChurnlabError
from churnlab.files import write_atomic
from churnlab.monitoring.records import tidy

JOURNAL = ".churnlab/cycle/journal.json"
LOCK = ".churnlab/cycle/lock"
FORMAT = 1


def decision_line(decision: dict) -> bytes:
    """One line of the log: key-sorted compact JSON and a newline."""
    return (json.dumps(tidy(decision), sort_keys=True, separators=(",", ":")) + "\n").encode()


def read_log(path: Path) -> list[dict]:
    """Every decision of the log, oldest first ([] when there is none yet).

    Raises:
        ChurnlabError: a line that is not JSON (the log was edited by hand).
    """
    if not path.is_file():
        return []
    decisions = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            decisions.append(json.loads(line))
        except json.JSONDecodeError:
            raise ChurnlabError(
                f"{path.name}: line {number}: expected one JSON decision per line, found "
                f"{line[:60]!r}: restore the log from git (`git checkout -- {path.name}`)"
            ) from None
    return decisions


def append_decision(path: Path, decision: dict) -> None:
    """Add a decision as the log's last line; the earlier lines keep their bytes."""
    before = path.read_bytes() if path.is_file() else b""
    if before and not before.endswith(b"\n"):
        raise ChurnlabError(f"{path}: the last line is unfinished: restore the log from git")
    write_atomic(path, before + decision_line(decision))


def read_journal(root: Path) -> dict | None:
    path = root / JOURNAL
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def write_journal(root: Path, journal: dict) -> None:
    write_atomic(root / JOURNAL, json.dumps(tidy(journal), sort_keys=True, indent=2).encode())


def clear_journal(root: Path) -> None:
    (root / JOURNAL).unlink(missing_ok=True)


COLUMNS = ("month", "rule", "action", "outcome", "before", "after", "reason")


def history_table(decisions: list[dict], width: int = 60) -> str:
    """The log as a text table: month, the rule that fired, what was done, model versions."""
    rows = [COLUMNS]
    for d in decisions:
        reason = d.get("reason", "")
        rows.append(
            (
                d["month"],
                d["rule"],
                d["action"],
                d["outcome"],
                f"v{d['champion_before']['version']}",
                f"v{d['champion_after']['version']}",
                reason if len(reason) <= width else reason[: width - 3] + "...",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(COLUMNS))]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
