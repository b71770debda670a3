"""The benchmark's reading of a run: DVC's lines and the runner's phase marks put together."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def a_run(bench, started: float):
    """A `dvc repro` of two stages: fetch (no marks) and train (marks), as DVC prints it."""
    lines = [
        (0.5, "Running stage 'fetch':"),
        (0.6, "> bin/churnlab fetch"),
        (2.0, "Running stage 'train':"),
        (2.1, "> bin/churnlab run train"),
        (9.0, "Updating lock file 'dvc.lock'"),
    ]
    return bench.Run(wall=10.0, lines=lines, started=started)


# the marks in the order the runner gives them, one of them a phase the benchmark does not know
MARKS = {
    "process start": 2.3,
    "runner start": 2.8,
    "kernel started": 3.0,
    "a new phase": 3.4,
    "first cell": 4.0,
    "notebook done": 7.0,
    "page written": 7.5,
    "recorded": 8.0,
    "kernel stopped": 8.2,
}


def test_a_stage_span_is_cut_at_its_marks_in_their_order_and_the_parts_add_up(bench):
    started = 1_700_000_000.0
    marks = {"train": {name: started + t for name, t in MARKS.items()}}

    startup, spans = bench.stage_spans(a_run(bench, started), marks)

    assert startup == 0.5
    assert startup + sum(s["span"] for s in spans.values()) == pytest.approx(10.0)
    assert "segments" not in spans["fetch"]
    train = spans["train"]
    labels = [label for label, _ in train["segments"]]
    names = list(MARKS)
    assert labels == [
        bench.BEFORE_PROCESS,
        *(f"{a} → {b}" for a, b in zip(names, names[1:], strict=False)),
        f"kernel stopped {bench.AFTER_LAST}",
    ]
    assert sum(seconds for _, seconds in train["segments"]) == pytest.approx(train["span"])
    assert dict(train["segments"])[bench.BEFORE_PROCESS] == pytest.approx(2.3 - 2.0)
    assert train["segments"][-1][1] == pytest.approx(10.0 - 8.2)
    assert bench.between(train, "first cell", "notebook done") == pytest.approx(3.0)
    # the runner's preparation ends at whatever mark comes last before the first cell
    assert bench.runner_preparation(train) == pytest.approx((3.4 - 2.8, 4.0 - 3.4))


def test_marks_of_a_stage_written_twice_keep_the_last_and_a_missing_file_is_none(bench, tmp_path):
    path = tmp_path / "timings.jsonl"
    assert bench.read_marks(path) == {}
    path.write_text(
        json.dumps({"stage": "train", "marks": {"runner start": 1.0}})
        + "\n"
        + json.dumps({"stage": "train", "marks": {"runner start": 2.0}})
        + "\n"
    )
    assert bench.read_marks(path) == {"train": {"runner start": 2.0}}


def exp_show(value: str, metrics: dict) -> list:
    """The shape of `dvc exp show --json` (DVC 3): the workspace, the baseline commit and its
    experiments, each with its params per file and metrics per file."""

    def entry(rev: str, rule: str, found: dict) -> dict:
        return {
            "rev": rev,
            "data": {
                "params": {
                    "params/evaluate.yaml": {"data": {"evaluate": {"threshold_rule": rule}}}
                },
                "metrics": found,
            },
        }

    baseline = entry("abc123", "max_f1", {"metrics/test.json": {"data": {"roc_auc": 0.84}}})
    baseline["experiments"] = [{"revs": [{**entry("def456", value, metrics), "name": "e"}]}]
    return [entry("workspace", "cost", {"metrics/test.json": {"data": {}}}), baseline]


def test_exp_show_counts_an_experiment_only_with_the_set_value_and_its_metrics(bench):
    setting = "params/evaluate.yaml:evaluate.threshold_rule=cost"
    with_metrics = {"metrics/test.json": {"data": {"roc_auc": 0.85}}}
    assert bench.shows_result(exp_show("cost", with_metrics), setting)
    assert not bench.shows_result(exp_show("max_f1", with_metrics), setting)  # workspace only
    assert not bench.shows_result(exp_show("cost", {}), setting)


def test_a_benchmark_section_replaces_its_own_block_and_keeps_the_others(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_results", BENCH.with_name("results.py"))
    results = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(results)
    target = tmp_path / "RESULTS.md"
    results.write_section("score", "first", target)  # no file yet: the block alone
    assert target.read_text() == "\n\n<!-- score -->\nfirst\n<!-- /score -->\n"
    target.write_text("# Results\n\n<!-- serve -->\nkept\n<!-- /serve -->\n")
    results.write_section("score", "one", target)
    results.write_section("score", "two", target)
    text = target.read_text()
    assert text.count("<!-- score -->") == 1 and "one" not in text
    assert text == (
        "# Results\n\n<!-- serve -->\nkept\n<!-- /serve -->\n\n"
        "<!-- score -->\ntwo\n<!-- /score -->\n"
    )
