"""Running the cycle on a schedule without CI: which months are due, and the cron line or
systemd timer that asks every day.

A month is due when its batch is in ``monitor.batches``, it comes after the last month of
the decision log (``cycle.log``: the state, so nothing else records what was done), and it
has begun by the clock's date. ``churnlab schedule`` runs the cycle for each due month in
order (a machine that was off for two months catches up) and does nothing when none is due,
so it can be asked daily: a month's batch that arrives late is still taken the next day.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from pathlib import Path

from churnlab.files import write_atomic

# every day at 06:17 (off the hour, when every other job starts): a no-op unless a month is due
CRON_TIMES = "17 6 * * *"
SYSTEMD_CALENDAR = "*-*-* 06:17:00"
UNIT = "churnlab-cycle"
# the command's log, kept by the project (git-ignored run state)
SCHEDULE_LOG = ".churnlab/schedule.log"
# the webhook URL and other secrets for the timer (never in the unit files themselves)
ENVIRONMENT_FILE = "%h/.config/churnlab/environment"


def month_of(day: date) -> str:
    return f"{day.year:04d}-{day.month:02d}"


def due_months(
    done: Iterable[str], batches: Iterable[str], today: date, reference_month: str
) -> list[str]:
    """The months the cycle should run now, oldest first.

    Args:
        done: the months of the decision log.
        batches: the months with a batch file.
        today: the clock's date; a month not yet begun is never due.
        reference_month: the last month of the training data; only later months are due.
    """
    last = max([reference_month, *done])
    current = month_of(today)
    return [month for month in sorted(set(batches)) if last < month <= current]


def run_due(
    today: date,
    run: Callable[[str], object],
    done: Sequence[str],
    batches: Sequence[str],
    reference_month: str,
) -> list[str]:
    """Run ``run(month)`` for each due month in order; the first failure stops the rest (a
    later month must not be decided before an earlier one)."""
    due = due_months(done, batches, today, reference_month)
    for month in due:
        run(month)
    return due


def cron_line(root: Path) -> str:
    """The crontab entry: daily, in the project, the output appended to its log."""
    return (
        f"{CRON_TIMES} cd {shlex.quote(str(root))} && mkdir -p .churnlab && "
        f"bin/churnlab schedule >> {SCHEDULE_LOG} 2>&1"
    )


def _systemd_quote(path: Path) -> str:
    # ExecStart splits on spaces unless quoted; % starts a systemd specifier
    return '"' + str(path).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'


def systemd_units(root: Path) -> dict[str, str]:
    """The user units: a oneshot service that runs ``churnlab schedule`` in the project and a
    daily timer (``Persistent``: a day missed while the machine was off runs at boot)."""
    where = str(root).replace("%", "%%")
    service = (
        "[Unit]\n"
        f"Description=churnlab: the continuous-training cycle of {where}\n"
        "\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"WorkingDirectory={where}\n"
        f"EnvironmentFile=-{ENVIRONMENT_FILE}\n"
        f"ExecStart={_systemd_quote(root / 'bin' / 'churnlab')} schedule\n"
    )
    timer = (
        "[Unit]\n"
        f"Description=churnlab: run the cycle of {where} when a month is due\n"
        "\n"
        "[Timer]\n"
        f"OnCalendar={SYSTEMD_CALENDAR}\n"
        "Persistent=true\n"
        "\n"
        "[Install]\n"
        "WantedBy=timers.target\n"
    )
    return {f"{UNIT}.service": service, f"{UNIT}.timer": timer}


def write_units(units: dict[str, str], folder: Path) -> list[Path]:
    """Write the unit files into ``folder`` (created), each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in units.items():
        write_atomic(folder / name, text.encode())
        written.append(folder / name)
    return written
