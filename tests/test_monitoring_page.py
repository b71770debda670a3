"""The monitoring page (reports/monitoring.html) and the Prometheus file
(monitoring/metrics.prom), built from verdicts.

Quick tests use real verdicts of a default run kept in tests/fixtures/monitoring (written by
`churnlab monitor` on simulated months); the slow ones simulate a year of small months on a
copy of the session's pipeline run and run `churnlab monitor --all`. The Prometheus file is
read back with prometheus_client's own parser and compared with the verdicts' fields; the
page is opened in headless Chromium with no network.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
from browser import Browser
from prometheus_client.parser import text_string_to_metric_families

from churnlab.errors import ChurnlabError
from churnlab.monitoring.page import (
    drift_heat_map,
    month_sentence,
    prometheus_text,
    read_verdicts,
    write_monitoring_outputs,
)
from churnlab.pipeline.pages import CONTENT_SECURITY_POLICY

from conftest import DEFAULTS, ROOT, committed_copy, run, set_param

FIXTURES = ROOT / "tests" / "fixtures" / "monitoring"
PAYLOAD = '<img src=x onerror="alert(1)"><script>alert(2);document.title="pwned"</script>'


def _verdicts() -> list[dict]:
    return read_verdicts(FIXTURES, "tests/fixtures/monitoring")


def _month(month: str) -> dict:
    return next(v for v in _verdicts() if v["month"] == month)


def _project(tmp_path: Path, verdicts: list[dict]) -> Path:
    """A folder with the default params and the given verdicts in monitoring/."""
    shutil.copytree(DEFAULTS / "params", tmp_path / "params")
    (tmp_path / "monitoring").mkdir()
    for verdict in verdicts:
        path = tmp_path / "monitoring" / f"{verdict['month']}.json"
        path.write_text(json.dumps(verdict, indent=2, sort_keys=True) + "\n")
    return tmp_path


def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text file, by name and labels (read by prometheus_client)."""
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation, family.name
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in found, f"duplicate sample {key}"
            found[key] = sample.value
    return found


def _key(name: str, **labels) -> tuple[str, frozenset]:
    return name, frozenset(labels.items())


def assert_prometheus_matches(text: str, verdicts: list[dict]) -> None:
    """Each gauge of the file equals the field of the verdict it comes from."""
    samples = _samples(text)
    latest = [dict(k[1]) for k in samples if k[0] == "churnlab_monitor_latest_month"]
    assert latest == [{"month": verdicts[-1]["month"]}]
    for verdict in verdicts:
        month = verdict["month"]
        for kind, value in verdict["alerts"].items():
            assert samples[_key("churnlab_alert", month=month, kind=kind)] == float(value)
        usable = samples[_key("churnlab_usable_for_training", month=month)]
        assert usable == float(verdict["usable_for_training"])
        for v in verdict["quality"]["violations"]:
            key = _key(
                "churnlab_quality_violations", month=month, column=v["column"], rule=v["rule"]
            )
            assert samples[key] == v["count"]
        for entry in verdict["features"]:
            for s in entry["statistics"]:
                labels = {"month": month, "column": entry["column"], "statistic": s["name"]}
                assert samples[_key("churnlab_feature_drift", **labels)] == s["value"]
                assert samples[_key("churnlab_feature_drift_threshold", **labels)] == s["threshold"]
            drifted = _key("churnlab_feature_drifted", month=month, column=entry["column"])
            assert samples[drifted] == float(entry["drifted"])
        performance = verdict["performance"]
        if performance is None:  # a month that could not be scored has no performance gauge
            assert _key("churnlab_estimated_recall", month=month) not in samples
            continue
        estimated = performance["estimated"]
        assert samples[_key("churnlab_estimated_recall", month=month)] == estimated["recall"]
        low, high = estimated["recall_interval"]
        assert samples[_key("churnlab_estimated_recall_lower", month=month)] == low
        assert samples[_key("churnlab_estimated_recall_upper", month=month)] == high
        realised = performance["realised"]
        if realised is None:
            assert _key("churnlab_realised_recall", month=month) not in samples
        else:
            assert samples[_key("churnlab_realised_recall", month=month)] == realised["recall"]
            assert samples[_key("churnlab_realised_roc_auc", month=month)] == realised["roc_auc"]
        flagged = samples[_key("churnlab_flagged_share", month=month, sample="month")]
        assert flagged == verdict["prediction"]["month"]["flagged_share"]
        drift = verdict["drift"]["score"]
        assert samples[_key("churnlab_drift_score", month=month)] == drift
        for reason in ("below_gate", "below_estimate"):
            flag = samples[_key(f"churnlab_performance_{reason}", month=month)]
            assert flag == float(performance[reason])


# --- quick: the fixture verdicts ----------------------------------------------------------


def test_the_prometheus_file_parses_and_equals_the_verdicts():
    verdicts = _verdicts()
    assert [v["month"] for v in verdicts] == ["2026-01", "2026-04", "2026-08", "2026-10", "2026-11"]
    assert_prometheus_matches(prometheus_text(verdicts), verdicts)


def test_prometheus_label_values_are_escaped_and_read_back_unchanged():
    verdicts = copy.deepcopy(_verdicts())
    odd = 'a "quoted" back\\slash\nnew line ' + PAYLOAD
    verdicts[1]["features"][0]["column"] = odd  # April
    verdicts[3]["quality"]["violations"][0]["rule"] = odd  # October
    text = prometheus_text(verdicts)
    assert "\nnew line" not in text  # a raw newline would cut the sample in two
    samples = _samples(text)
    columns = {dict(k[1]).get("column") for k in samples}
    rules = {dict(k[1]).get("rule") for k in samples}
    assert odd in columns and odd in rules
    assert_prometheus_matches(text, verdicts)


def test_the_sentence_comes_from_the_verdict_fields_not_from_column_names():
    verdict = _month("2026-04")  # a category's share moved
    first = verdict["features"][0]
    change = first["largest_change"]
    sentence = month_sentence(verdict)
    assert sentence.startswith("April 2026: ")
    assert f"customers with {first['column']} = {change['category']}" in sentence
    assert f"{100 * change['reference_share']:.0f}%" in sentence
    assert f"{100 * change['month_share']:.0f}%" in sentence
    assert f"realised recall {verdict['performance']['realised']['recall']:.2f}" in sentence
    first["column"], change["category"] = "plan kind", "pay as you go"
    verdict["performance"]["realised"] = None
    sentence = month_sentence(verdict)
    assert "customers with plan kind = pay as you go rose from" in sentence
    low, high = verdict["performance"]["estimated"]["recall_interval"]
    recall = verdict["performance"]["estimated"]["recall"]
    assert f"estimated recall {recall:.2f} ({low:.2f}-{high:.2f})" in sentence
    gate = verdict["performance"]["gate"]["value"]
    assert f"still above the gate {gate:g}" in sentence
    verdict["performance"]["estimated"]["recall_interval"] = [low, gate - 0.01]
    assert f"below the gate {gate:g}" in month_sentence(verdict)
    concept = _month("2026-08")  # the same customers churn differently
    assert concept["performance"]["below_estimate"]
    low, high = concept["performance"]["estimated"]["recall_interval"]
    assert f"below the {low:.2f}-{high:.2f} its scores promise" in month_sentence(concept)
    quality_failed = _month("2026-11")
    violation = quality_failed["quality"]["violations"][0]
    assert f"{violation['column']}: {violation['rule']}" in month_sentence(quality_failed)
    assert "never to be used for training" in month_sentence(quality_failed)


def test_the_heat_map_puts_the_worst_columns_first():
    verdicts = _verdicts()
    heat = drift_heat_map(verdicts)
    assert heat["months"] == [v["month"] for v in verdicts]
    drifted = [row["drifted_months"] for row in heat["rows"]]
    assert drifted == sorted(drifted, reverse=True)
    top = heat["rows"][0]
    april, october = _month("2026-04")["features"][0], _month("2026-10")["features"][0]
    assert top["column"] in {april["column"], october["column"]}
    worst = max(s["value"] / s["threshold"] for s in april["statistics"])
    row = next(r for r in heat["rows"] if r["column"] == april["column"])
    assert row["cells"][1]["severity"] == pytest.approx(worst)
    assert row["cells"][4] is None  # November could not be scored


def test_same_verdicts_give_the_same_bytes(tmp_path):
    first = _project(tmp_path / "a", _verdicts())
    second = _project(tmp_path / "b", list(reversed(_verdicts())))  # file order does not count
    outputs = [write_monitoring_outputs(root) for root in (first, second)]
    contents = [[p.read_bytes() for p in pair] for pair in outputs]
    assert contents[0] == contents[1]
    assert outputs[0][0] == first / "reports" / "monitoring.html"
    assert outputs[0][1] == first / "monitoring" / "metrics.prom"
    assert not [p for p in (first / "monitoring").iterdir() if p.name.startswith(".")]


def test_no_verdict_or_a_broken_one_is_one_clear_error_and_keeps_the_earlier_page(tmp_path):
    root = _project(tmp_path, [])
    with pytest.raises(ChurnlabError, match=r"^monitoring: no verdict .*churnlab monitor --all"):
        write_monitoring_outputs(root)
    root = _project(tmp_path / "broken", _verdicts())
    page, prom = write_monitoring_outputs(root)
    before = page.read_bytes(), prom.read_bytes()
    (root / "monitoring" / "2026-12.json").write_text("{not json")
    with pytest.raises(ChurnlabError, match=r"^monitoring/2026-12\.json: not a verdict"):
        write_monitoring_outputs(root)
    assert (page.read_bytes(), prom.read_bytes()) == before


def test_a_secret_in_the_params_or_environment_is_masked(tmp_path, monkeypatch):
    monkeypatch.setenv("CHURNLAB_CANARY_TOKEN", "canary-env-0c41d2")
    verdicts = copy.deepcopy(_verdicts())
    verdicts[1]["features"][0]["column"] = "leaks canary-env-0c41d2 and canary-param-77ab3e"
    root = _project(tmp_path, verdicts)
    set_param(root, "params/report.yaml", "report.smtp_password", "canary-param-77ab3e")
    for path in write_monitoring_outputs(root):
        text = path.read_text()
        assert "canary-env-0c41d2" not in text and "canary-param-77ab3e" not in text
        assert "leaks *** and ***" in text


@pytest.fixture(scope="module")
def browser():
    opened = Browser()
    yield opened
    opened.close()


def test_the_page_opens_offline_and_shows_a_payload_as_text(tmp_path, browser):
    verdicts = copy.deepcopy(_verdicts())
    verdicts[1]["features"][0]["column"] = PAYLOAD
    verdicts[1]["summary"] = PAYLOAD
    verdicts[3]["quality"]["violations"][0]["examples"] = [PAYLOAD]
    root = _project(tmp_path, verdicts)
    set_param(root, "params/report.yaml", "report.title", PAYLOAD)
    page, _ = write_monitoring_outputs(root)
    seen = browser.check(page)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.failed_requests == [] and seen.outside_requests == []
    assert seen.dialogs == [] and seen.title != "pwned"
    assert seen.broken_images == [] and seen.images == 2  # scores and performance figures
    assert seen.content_security_policy == CONTENT_SECURITY_POLICY
    assert seen.local_links == ["index.html"]
    assert PAYLOAD in seen.text
    for verdict in verdicts:
        assert verdict["month"] in seen.text


# --- slow: simulated months of a real run, through the command ----------------------------


@pytest.fixture(scope="module")
def monitored(tmp_path_factory, pipeline_project) -> Path:
    """A copy of the default run with a simulated year of small months, all judged."""
    target = committed_copy(pipeline_project, tmp_path_factory.mktemp("monpage") / "project")
    set_param(target, "params/monitor.yaml", "monitor.simulate.customers", 500)
    run(["churnlab", "simulate"], target)
    result = run(["churnlab", "monitor", "--all"], target)
    assert "reports/monitoring.html" in result.stderr and "metrics.prom" in result.stderr
    return target


@pytest.mark.pipeline
def test_monitor_all_writes_the_page_and_the_prometheus_file_of_every_month(monitored, browser):
    verdicts = read_verdicts(monitored / "monitoring", "monitoring")
    assert len(verdicts) == 12
    prom = (monitored / "monitoring" / "metrics.prom").read_text()
    assert_prometheus_matches(prom, verdicts)
    seen = browser.check(monitored / "reports" / "monitoring.html")
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.failed_requests == [] and seen.outside_requests == []
    assert seen.broken_images == [] and seen.images == 2
    drifted = {c for v in verdicts for c in (v["drift"] or {}).get("drifted_columns", [])}
    assert drifted, "the simulated year has drift months"
    for column in drifted:
        assert column in seen.text
    for verdict in verdicts:
        assert verdict["month"] in seen.text
        assert month_sentence(verdict) in seen.text
    index = browser.check(monitored / "reports" / "index.html")
    assert "monitoring.html" in index.local_links


@pytest.mark.pipeline
def test_monitor_all_again_gives_the_same_bytes(monitored):
    outputs = [monitored / "reports" / "monitoring.html", monitored / "monitoring" / "metrics.prom"]
    before = [p.read_bytes() for p in outputs]
    run(["churnlab", "monitor", "--all"], monitored)
    assert [p.read_bytes() for p in outputs] == before
