"""The schedule: which months are due, the cron line and systemd timer `churnlab schedule
--install` gives, and the two GitHub workflows checked offline against GitHub's schema."""

from __future__ import annotations

import configparser
import json
import shlex
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from churnlab.cli import main
from churnlab.cycle.schedule import (
    SCHEDULE_LOG,
    cron_line,
    due_months,
    run_due,
    systemd_units,
    write_units,
)

from conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
# (name, lowest, highest) of the five time fields of a crontab line
CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day", 1, 31),
    ("month", 1, 12),
    ("weekday", 0, 7),
)


def cron_field_values(text: str, low: int, high: int) -> set[int]:
    """The values one crontab time field stands for (lists, ranges, steps, *), as cron(8)
    reads them; anything else is a ValueError."""
    values: set[int] = set()
    for part in text.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            start, end = low, high
        elif "-" in span:
            start, end = (int(x) for x in span.split("-"))
        else:
            start = end = int(span)
        if not low <= start <= end <= high or (step and int(step) < 1):
            raise ValueError(f"{part!r} outside {low}-{high}")
        values |= set(range(start, end + 1, int(step) if step else 1))
    return values


def parse_cron(line: str) -> tuple[list[set[int]], str]:
    fields = line.split(None, 5)
    assert len(fields) == 6, f"five time fields and a command: {line!r}"
    times = [
        cron_field_values(f, lo, hi) for f, (_, lo, hi) in zip(fields, CRON_FIELDS, strict=False)
    ]
    return times, fields[5]


def load_workflow(name: str) -> dict:
    # YAML 1.1 reads the key `on` as true: GitHub reads it as the name "on"
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True)
    return workflow


def run_lines(workflow: dict) -> list[str]:
    return [
        line.strip()
        for job in workflow["jobs"].values()
        for step in job["steps"]
        for line in step.get("run", "").splitlines()
    ]


def test_the_cron_parser_refuses_what_cron_refuses():
    assert cron_field_values("*/15", 0, 59) == {0, 15, 30, 45}
    assert cron_field_values("1-3,7", 1, 12) == {1, 2, 3, 7}
    for bad in ("60", "5-1", "x", "*/0"):
        with pytest.raises(ValueError):
            cron_field_values(bad, 0, 59)


def test_a_month_is_due_after_the_last_done_once_it_has_begun_and_its_batch_is_there():
    batches = ["2026-01", "2026-02", "2026-03", "2026-05"]
    assert due_months([], batches, date(2026, 3, 2), "2025-12") == ["2026-01", "2026-02", "2026-03"]
    assert due_months(["2026-01", "2026-02"], batches, date(2026, 3, 1), "2025-12") == ["2026-03"]
    # all done; 2026-04 has no batch yet; 2026-05 has not begun
    assert (
        due_months(["2026-01", "2026-02", "2026-03"], batches, date(2026, 4, 30), "2025-12") == []
    )
    assert due_months(["2026-03"], batches, date(2026, 5, 1), "2025-12") == ["2026-05"]
    # months of the training data itself are never due
    assert due_months([], ["2025-11", "2025-12"], date(2026, 1, 5), "2025-12") == []


def test_due_months_run_in_order_and_a_failure_stops_the_later_ones():
    ran = []

    def run(month):
        ran.append(month)
        if month == "2026-02":
            raise RuntimeError("the cycle failed")

    with pytest.raises(RuntimeError):
        run_due(date(2026, 3, 9), run, [], ["2026-03", "2026-01", "2026-02"], "2025-12")
    assert ran == ["2026-01", "2026-02"]


def test_the_cron_line_runs_the_schedule_daily_in_the_project(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    assert main(["schedule", "--install", "cron"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == cron_line(ROOT)
    (minute, hour, day, month, weekday), command = parse_cron(line)
    assert len(minute) == len(hour) == 1, "once a day"
    assert day == set(range(1, 32)) and month == set(range(1, 13)) and len(weekday) == 8
    words = shlex.split(command)
    assert words[:2] == ["cd", str(ROOT)]
    assert "bin/churnlab" in words and words[words.index("bin/churnlab") + 1] == "schedule"
    assert (ROOT / "bin" / "churnlab").is_file()
    assert command.endswith(f">> {SCHEDULE_LOG} 2>&1")
    # a project path with a space survives the shell
    spaced = tmp_path / "my project"
    assert shlex.split(parse_cron(cron_line(spaced))[1])[:2] == ["cd", str(spaced)]


def test_systemd_units_are_written_and_their_timer_is_daily(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    units = tmp_path / "units"
    assert main(["schedule", "--install", "systemd", "--unit-dir", str(units)]) == 0
    assert "systemctl --user daemon-reload" in capsys.readouterr().err
    assert sorted(p.name for p in units.iterdir()) == [
        "churnlab-cycle.service",
        "churnlab-cycle.timer",
    ]
    service, timer = (
        configparser.ConfigParser(interpolation=None),
        configparser.ConfigParser(interpolation=None),
    )
    service.read(units / "churnlab-cycle.service")
    timer.read(units / "churnlab-cycle.timer")
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["WorkingDirectory"] == str(ROOT)
    assert shlex.split(service["Service"]["ExecStart"]) == [
        str(ROOT / "bin" / "churnlab"),
        "schedule",
    ]
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Install"]["WantedBy"] == "timers.target"
    if shutil.which("systemd-analyze"):  # systemd's own reading of the calendar, where it exists
        shown = subprocess.run(
            ["systemd-analyze", "calendar", timer["Timer"]["OnCalendar"]],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "Normalized form: *-*-* 06:17:00" in shown


def test_unit_files_quote_a_path_with_spaces_and_percent(tmp_path):
    root = tmp_path / "100% churn"
    written = write_units(systemd_units(root), tmp_path / "units")
    service = configparser.ConfigParser(interpolation=None)
    service.read(written[0])
    assert service["Service"]["ExecStart"] == f'"{tmp_path}/100%% churn/bin/churnlab" schedule'


def test_both_workflows_pass_githubs_workflow_schema_and_a_broken_one_does_not(tmp_path):
    broken = load_workflow("ci.yml")
    del broken["jobs"]["test"]["runs-on"]  # a job must say where it runs
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert [p.name for p in workflows] == ["ci.yml", "monthly-cycle.yml"]
    # one run for the three files: the command takes seconds to start
    result = subprocess.run(
        [
            str(CHECK_JSONSCHEMA),
            "--builtin-schema",
            "vendor.github-workflows",
            "--output-format",
            "json",
            *map(str, workflows),
            str(tmp_path / "broken.yml"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    errors = json.loads(result.stdout)["errors"]
    assert {Path(e["filename"]).name for e in errors} == {"broken.yml"}, result.stdout


def test_the_monthly_workflow_sets_up_runs_the_cycle_pushes_and_commits():
    workflow = load_workflow("monthly-cycle.yml")
    [schedule] = workflow["on"]["schedule"]
    (minute, hour, day, month, _), _ = parse_cron(schedule["cron"] + " command")
    assert len(day) == 1 and month == set(range(1, 13)), "once a month"
    assert "workflow_dispatch" in workflow["on"]
    lines = run_lines(workflow)
    readme = (ROOT / "README.md").read_text()
    assert "make setup" in lines and "make setup" in readme
    assert ".venv/bin/churnlab schedule" in lines and 'make cycle MONTH="$MONTH"' in lines
    assert lines.index(".venv/bin/dvc push") > lines.index(".venv/bin/churnlab schedule")
    cycle_log = yaml.safe_load((ROOT / "params" / "cycle.yaml").read_text())["cycle"]["log"]
    assert f"git add dvc.lock {cycle_log}" in lines
    assert "git push" in lines
    # the secrets come from the repository's secrets, never written in the file
    env = workflow["jobs"]["cycle"]["env"]
    assert env["CHURNLAB_WEBHOOK_URL"] == "${{ secrets.CHURNLAB_WEBHOOK_URL }}"


def test_the_ci_workflow_runs_make_test_and_puts_the_metrics_diff_in_the_summary():
    workflow = load_workflow("ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    lines = run_lines(workflow)
    assert ".ci/run" in lines
    assert (ROOT / ".ci" / "run").read_text().rstrip().splitlines()[-1] == "make test"
    assert ".venv/bin/dvc metrics diff --md origin/main" in lines
    assert '} >> "$GITHUB_STEP_SUMMARY"' in lines


def _scheduled_project(folder: Path, done: list[str], batches: list[str]) -> Path:
    """A project's params and dvc.yaml, a decision log of ``done`` and empty batch files."""
    from conftest import DEFAULTS

    shutil.copytree(DEFAULTS / "params", folder / "params")
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    params = {**yaml.safe_load((folder / "params" / "cycle.yaml").read_text())}
    log = folder / params["cycle"]["log"]
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(json.dumps({"month": m}) + "\n" for m in done))
    (folder / "data" / "batches").mkdir(parents=True)
    for month in batches:
        (folder / "data" / "batches" / f"{month}.parquet").write_bytes(b"")
    return folder


def test_schedule_does_nothing_until_a_month_is_due_then_runs_the_cycle(
    tmp_path, monkeypatch, capsys
):
    project = _scheduled_project(
        tmp_path, ["2026-01", "2026-02"], ["2026-01", "2026-02", "2026-04"]
    )
    monkeypatch.chdir(project)
    assert main(["schedule", "--today", "2026-03-31"]) == 0
    assert "nothing due on 2026-03-31: the last month done is 2026-02" in capsys.readouterr().err
    # 2026-04 has begun: the real cycle runs, and refuses what it finds (labels of a month
    # it never scored), before it opens the tracking store
    (project / "data" / "labels").mkdir()
    (project / "data" / "labels" / "2026-02.csv").write_text("customerID,Churn\n")
    assert main(["schedule", "--today", "2026-04-01"]) == 1
    err = capsys.readouterr().err
    assert "[schedule] 2026-04 is due: churnlab cycle 2026-04" in err
    assert err.splitlines()[-1].startswith(
        "churnlab: error: data/labels/2026-02.csv: labels of 2026-02, a month never scored"
    )
    assert main(["schedule", "--today", "April"]) == 1
    assert "--today: expected a date as YYYY-MM-DD" in capsys.readouterr().err
