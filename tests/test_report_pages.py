"""Every report page opened in a real headless Chromium from file://, with no network.

The pages come from the one full ``dvc repro`` of the session (``pipeline_project``). Each
must load with no console error, no failed or outside request, every image decoded and no
code visible. A payload in the data or in a notebook output must show as text and never run;
a secret must never be written. The index page's screenshot is kept as a test artifact.
"""

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from browser import Browser
from demo_stage import make_project

from churnlab.pipeline.execute import run_stage
from churnlab.pipeline.pages import CONTENT_SECURITY_POLICY
from churnlab.report.pages import build_reports

from conftest import ROOT, set_param

pytestmark = pytest.mark.pipeline
ARTIFACTS = Path(os.environ.get("CHURNLAB_TEST_ARTIFACTS", ROOT / ".churnlab" / "test-artifacts"))
PAGES = [
    "reports/index.html",
    "reports/model_card.html",
    "reports/notebooks/01_explore.html",
    "reports/notebooks/02_prepare.html",
    "reports/notebooks/03_train.html",
    "reports/notebooks/04_evaluate.html",
]
EXPERIMENTS = "experiments.html"  # `churnlab exps` writes it next to the index
MONITORING = "monitoring.html"  # `churnlab monitor --all` too: test_monitoring_page.py


@pytest.fixture(scope="module")
def browser():
    opened = Browser()
    yield opened
    opened.close()


@pytest.mark.parametrize("page", PAGES)
def test_a_report_page_loads_cleanly_from_file_with_no_network(pipeline_project, browser, page):
    path = pipeline_project / page
    shot = ARTIFACTS / "index.png" if page.endswith("index.html") else None
    seen = browser.check(path, screenshot=shot)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.failed_requests == [] and seen.outside_requests == []
    assert seen.broken_images == []
    assert seen.code_inputs == 0
    assert seen.content_security_policy == CONTENT_SECURITY_POLICY  # one policy, every page
    assert "import " not in seen.text and "paths_" not in seen.text  # no code, no parameters
    for link in seen.local_links:
        if link in (EXPERIMENTS, MONITORING):
            continue  # written by `churnlab exps` and `churnlab monitor`, not the pipeline
        assert (path.parent / link.split("#")[0]).is_file(), f"{page}: broken link {link}"
    if "index" in page or "explore" in page or "evaluate" in page:
        assert seen.images >= 2
    if shot is not None:
        assert shot.stat().st_size > 10_000


def test_the_index_page_links_every_notebook_report_and_the_model_card(pipeline_project, browser):
    seen = browser.check(pipeline_project / "reports" / "index.html")
    linked = {f"reports/{link.split('#')[0]}" for link in seen.local_links}
    assert linked == {*PAGES[1:], f"reports/{EXPERIMENTS}", f"reports/{MONITORING}"}, (
        "the index links each notebook report, the model card, the experiments and monitoring pages"
    )


@pytest.fixture(scope="module")
def report_copy(pipeline_project, tmp_path_factory):
    """A copy of the pipeline's outputs to build reports from changed inputs."""
    copy = tmp_path_factory.mktemp("report") / "project"
    shutil.copytree(pipeline_project, copy, ignore=shutil.ignore_patterns(".git", ".dvc"))
    return copy


PAYLOAD = '<img src=x onerror="alert(1)"><script>alert(2);document.title="pwned"</script>'


def test_a_payload_in_a_categorical_value_shows_as_text_and_never_runs(report_copy, browser):
    segments = yaml.safe_load((report_copy / "params" / "report.yaml").read_text())
    column = segments["report"]["segments"][0]["column"]
    test_path = report_copy / "data" / "prepared" / "test.parquet"
    test = pd.read_parquet(test_path)
    first_value = test[column].iloc[0]
    test[column] = test[column].where(test[column] != first_value, PAYLOAD)
    test.to_parquet(test_path, index=False)
    set_param(report_copy, "params/report.yaml", "report.title", PAYLOAD)
    for page in build_reports(report_copy):
        seen = browser.check(page)
        assert seen.dialogs == [] and seen.title != "pwned"
        assert seen.outside_requests == [] and seen.console_errors == []
        assert PAYLOAD in seen.text, f"{page.name}: the payload shows as text"


def test_a_payload_in_a_notebook_output_or_markdown_never_runs(tmp_path, browser):
    root = make_project(tmp_path, "html_payload.py")
    run_stage("demo", root=root)
    seen = browser.check(root / "reports" / "demo.html")
    assert seen.dialogs == [] and seen.page_errors == [] and seen.console_errors == []
    assert seen.outside_requests == [] and seen.failed_requests == []
    assert seen.title != "pwned", "an event handler in a markdown cell ran"
    assert seen.broken_images == [] and seen.images == 1  # the markdown's embedded image
    assert "visible cell" in seen.text and "markdown link" in seen.text
    assert not [link for link in seen.local_links if "script:" in link.lower()]
    assert seen.content_security_policy == CONTENT_SECURITY_POLICY  # as the report pages


def test_no_secret_reaches_a_report_page(report_copy, monkeypatch):
    monkeypatch.setenv("CHURNLAB_CANARY_TOKEN", "canary-env-0c41d2")
    set_param(report_copy, "params/report.yaml", "report.purpose", "uses canary-env-0c41d2")
    content = yaml.safe_load((report_copy / "params" / "report.yaml").read_text())
    content["report"]["smtp_password"] = "canary-param-77ab3e"
    content["report"]["title"] = "Churn (canary-param-77ab3e)"
    (report_copy / "params" / "report.yaml").write_text(yaml.safe_dump(content))
    for page in build_reports(report_copy):
        text = page.read_text()
        assert "canary-env-0c41d2" not in text and "canary-param-77ab3e" not in text
        assert "Churn (***)" in text
