"""The stakeholder report's pages rendered from small tables: headline numbers, escaping,
the content security policy, the currency and sensitive sentences of params."""

import shutil

import numpy as np
import pytest
import yaml
from report_tables import EVALUATE, METRICS, scored_customers

from churnlab.evaluation import plot_tables
from churnlab.pipeline.pages import CONTENT_SECURITY_POLICY
from churnlab.report.baseline import compare_with_baseline
from churnlab.report.bootstrap import bootstrap_intervals
from churnlab.report.figures import figures
from churnlab.report.pages import business_summary, render_pages
from churnlab.report.segments import segment_gaps, segment_performance, sensitive_inputs

from conftest import ROOT, run


@pytest.fixture
def scored():
    return scored_customers()


def test_the_business_summary_comes_from_the_metrics_and_costs():
    summary = business_summary(METRICS, EVALUATE)
    assert summary["flagged"] == 350 and summary["flagged_share"] == 0.35
    assert summary["leavers"] == 250 and summary["caught"] == 193
    assert summary["saving_per_1000"] == pytest.approx(42200.0)


PAYLOAD = '<script>document.title="pwned"</script><img src=x onerror="alert(1)">'


def page_context(scored, group_name=PAYLOAD, currency="$"):
    table, labels, scores = scored
    table = table.assign(plan=np.where(table["plan"] == "monthly", group_name, "yearly"))
    performance = segment_performance(
        table, labels, scores, 0.5, [{"column": "plan", "label": "Plan"}], 50
    )
    card = {
        "intended_use": "use",
        "out_of_scope": ["x"],
        "limitations": ["y"],
        "ethical_considerations": ["z"],
    }
    return {
        "report": {
            "title": "Churn",
            "purpose": "Purpose.",
            "currency": currency,
            "bootstrap_samples": 100,
            "confidence": 0.95,
            "seed": 1,
            "min_segment_size": 50,
            "model_card": card,
        },
        "business": business_summary(METRICS, EVALUATE),
        "metrics": METRICS,
        "cv": {"roc_auc_mean": 0.83, "roc_auc_std": 0.01, "folds": 5},
        "intervals": bootstrap_intervals(labels, scores, 0.5, 0.1, 100, seed=1),
        "metric_labels": {
            "roc_auc": "ROC AUC",
            "top_precision": "tp",
            "top_capture_rate": "tc",
            "precision": "p",
            "recall": "r",
            "f1": "f1",
            "accuracy": "a",
            "brier": "b",
        },
        "segments": performance.to_dict("records"),
        "gaps": segment_gaps(performance),
        "sensitive": sensitive_inputs(["plan"], ["months", "plan"], []),
        "calibration_gap": 0.05,
        "comparison": compare_with_baseline({"metrics": METRICS, "params": {}, "data": {}}, None),
        "baseline_file": "metrics/baseline.json",
        "data": {
            "source": group_name,
            "sha256": None,
            "rows": 400,
            "train_rows": 300,
            "test_rows": 100,
            "churn_rate_train": 0.2,
            "churn_rate_test": 0.2,
            "numeric": ["months"],
            "categorical": ["plan"],
        },
        "model": {"family": "gradient_boosting", "calibration": "sigmoid", "cv_folds": 5},
        "notebooks": [{"stage": "explore", "title": "Explore", "href": "notebooks/x.html"}],
        "figures": figures(labels, scores, 0.5, 0.1, performance, plot_tables(labels, scores, 0.5)),
    }


def test_a_payload_in_the_data_is_escaped_in_every_page(scored):
    pages = render_pages(page_context(scored))
    for name, html in pages.items():
        assert "<script>document" not in html, name
        assert "&lt;script&gt;document.title=&#34;pwned&#34;&lt;/script&gt;" in html, name
        assert "<script" not in html.lower(), name
        policy = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        assert policy in html, name


def test_the_pages_use_the_currency_and_sensitive_sentences_of_params(scored):
    pages = render_pages(page_context(scored, group_name="monthly", currency="EUR "))
    assert "EUR 42,200" in pages["index.html"] and "$" not in pages["index.html"]
    assert "Plan is an input of the model" in pages["model_card.html"]


def test_bytecode_in_the_report_folder_does_not_change_the_report_stage(tmp_path):
    """The report stage depends on the package folder; importing it writes __pycache__ there
    (unless PYTHONDONTWRITEBYTECODE), which must not make the stage look changed."""
    report = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]
    folder = "src/churnlab/report"
    assert folder in report["deps"]
    shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".dvcignore", tmp_path / ".dvcignore")
    stage = {"cmd": "echo built > page.txt", "deps": [folder], "outs": ["page.txt"]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"report": stage}}))
    run(["dvc", "init", "-q", "--no-scm", "-f"], tmp_path)
    run(["dvc", "repro", "-q"], tmp_path)
    cache = tmp_path / folder / "__pycache__"
    cache.mkdir()
    (cache / "pages.cpython-311.pyc").write_bytes(b"\x00bytecode")
    assert "up to date" in run(["dvc", "status"], tmp_path).stdout
    (tmp_path / folder / "pages.py").write_text("# changed\n")
    assert "modified" in run(["dvc", "status"], tmp_path).stdout
