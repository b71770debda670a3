"""`churnlab exps`: DVC experiments side by side, in the terminal and on an offline page.

Small rows shaped like ``dvc.api.exp_show`` output test the comparison; then two real
experiments on a copy of the pipeline's project are compared with numbers read from their
committed metrics files, and the page is opened in headless Chromium with no network.
"""

import json
import re
import shlex
import subprocess

import pytest
from browser import Browser

from churnlab.report.experiments import (
    WIDTH,
    compare,
    format_delta,
    format_metric,
    format_table,
    render_page,
)

from conftest import committed_copy, run, tool_env

PARAMS = {"train.family", "train.cv_folds", "evaluate.threshold_rule", "report.smtp_password"}


def exp_row(name, typ, roc_auc, brier=0.14, family="gradient_boosting", **extra):
    """One row as ``dvc.api.exp_show`` returns it (numbers as floats, files qualified only
    where a name is ambiguous)."""
    return {
        "Experiment": name if typ != "baseline" else None,
        "rev": name if typ == "baseline" else f"{abs(hash(name)) % 10**7:07d}",
        "typ": typ,
        "Created": "Nov 27, 2026",
        "parent": None,
        "State": extra.pop("State", None),
        "Executor": None,
        "roc_auc": roc_auc,
        "pr_auc": 0.65,
        "recall": 0.77,
        "precision": 0.55,
        "cost.model": 50000.0,
        "brier": brier,
        "metrics/cv.json:roc_auc_mean": 0.84,
        "train.family": family,
        "train.cv_folds": 5.0,
        "params/evaluate.yaml:evaluate.threshold_rule": "max_f1",
        "data/raw/churn.csv": "a1b2c3",  # a dep's hash, neither param nor metric
        **extra,
    }


ROWS = [
    exp_row("workspace", "baseline", 0.8456),
    exp_row("main", "baseline", 0.8456),
    exp_row("worse-one", "branch_commit", 0.8400, brier=0.13, family="logistic_regression"),
    exp_row("better-one", "branch_commit", 0.8500, brier=0.15, **{"train.cv_folds": 3.0}),
    exp_row("failed-one", "branch_base", None, None, State="Failed", **{"train.cv_folds": 2.0}),
]


def test_every_metric_churnlab_exps_shows_is_in_the_one_file_dvc_reads():
    from churnlab.evaluation import HEADLINE_METRICS as DVC_READS
    from churnlab.report.experiments import HEADLINE_METRICS
    from churnlab.tracking.settings import PROMOTION_METRICS

    assert set(HEADLINE_METRICS) | set(PROMOTION_METRICS) <= set(DVC_READS)


def test_experiments_are_sorted_best_first_by_the_promotion_metric_failed_ones_last():
    (comparison,) = compare(ROWS, PARAMS, "roc_auc")
    assert comparison.baseline.name == "main"  # the workspace row is not an experiment
    assert [c.row.name for c in comparison.experiments] == ["better-one", "worse-one", "failed-one"]
    (by_brier,) = compare(ROWS, PARAMS, "brier")  # lower is better
    assert [c.row.name for c in by_brier.experiments] == ["worse-one", "better-one", "failed-one"]
    assert by_brier.metrics[-1] == "brier"  # the promotion metric is shown too


def test_deltas_are_the_experiment_minus_its_baseline_and_only_changed_params_show():
    (comparison,) = compare(ROWS, PARAMS, "roc_auc")
    better, worse, failed = comparison.experiments
    assert better.deltas["roc_auc"] == pytest.approx(0.8500 - 0.8456)
    assert worse.deltas["roc_auc"] == pytest.approx(0.8400 - 0.8456)
    assert failed.deltas["roc_auc"] is None and failed.row.state == "Failed"
    assert comparison.changed_params == ["train.cv_folds", "train.family"]
    assert better.params == {"train.cv_folds": ("5", "3")}
    assert worse.params == {"train.family": ("gradient_boosting", "logistic_regression")}


def test_every_line_of_the_table_fits_the_terminal_whatever_the_names():
    long = "x" * 300
    rows = [*ROWS, exp_row("a-very-long-experiment-name-indeed", "branch_commit", 0.8, family=long)]
    table = format_table(compare(rows, PARAMS, "roc_auc"))
    assert max(len(line) for line in table.splitlines()) <= WIDTH
    assert "+0.0044" in table and "-0.0056" in table
    assert "train.family: gradient_boosting -> logistic_regression" in table
    assert "No experiments" in format_table(compare(ROWS[:2], PARAMS, "roc_auc"))


def test_a_secret_param_set_by_an_experiment_never_shows():
    secret = {"report.smtp_password": "canary-exp-5a1f0c"}
    rows = [*ROWS[:2], exp_row("leaky", "branch_commit", 0.85, **secret)]
    comparisons = compare(rows, PARAMS, "roc_auc")
    for text in (format_table(comparisons), render_page(comparisons, title="t")):
        assert "canary-exp-5a1f0c" not in text and "report.smtp_password" in text


PAYLOAD = '<script>alert(1)</script><img src=x onerror="alert(2)">'


def test_the_page_escapes_every_value():
    rows = [*ROWS[:2], exp_row(PAYLOAD, "branch_commit", 0.85, family=PAYLOAD)]
    page = render_page(compare(rows, PARAMS, "roc_auc"), title=PAYLOAD)
    assert PAYLOAD not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page
    assert "default-src 'none'" in page  # the report's Content-Security-Policy


# --- two real experiments ------------------------------------------------------------------

EXPERIMENTS = {
    "cost-rule": [
        "params/evaluate.yaml:evaluate.threshold_rule=cost",
        "params/evaluate.yaml:evaluate.importance_repeats=1",
    ],
    "logistic": [
        "params/train.yaml:train.family=logistic_regression",
        "params/evaluate.yaml:evaluate.importance_repeats=1",
    ],
}
HEADLINE = ["roc_auc", "pr_auc", "recall", "precision", "cost.model"]


def git_json(project, rev, path):
    return json.loads(run(["git", "show", f"{rev}:{path}"], project).stdout)


def metric(content, dotted):
    for part in dotted.split("."):
        content = content[part]
    return content


@pytest.fixture(scope="module")
def exps_project(pipeline_project, tmp_path_factory):
    """A copy of the pipeline's project (git history too), the run committed, two experiments."""
    copy = committed_copy(pipeline_project, tmp_path_factory.mktemp("exps") / "project")
    for name, sets in EXPERIMENTS.items():
        run(["dvc", "exp", "run", "-n", name, *(a for s in sets for a in ("-S", s))], copy)
        # each experiment starts from the commit, not from the last one's applied results
        run(["git", "checkout", "--", "."], copy)
        run(["dvc", "checkout", "--force"], copy)
    run(["dvc", "exp", "apply", "cost-rule"], copy)  # a workspace that is not the baseline
    return copy


@pytest.mark.pipeline
def test_churnlab_exps_compares_both_experiments_with_the_baseline(exps_project):
    shown = run(["churnlab", "exps"], exps_project).stdout
    lines = shown.splitlines()
    assert max(len(line) for line in lines) <= WIDTH
    baseline = git_json(exps_project, "HEAD", "metrics/test.json")
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], exps_project).stdout
    # refs/exps/<baseline sha as 2/38 characters>/<name>; others are DVC's own bookkeeping
    revs = {r.rsplit("/", 1)[-1]: r for r in refs.split() if len(r.split("/")) == 5}
    assert set(revs) == set(EXPERIMENTS)
    found = {name: git_json(exps_project, rev, "metrics/test.json") for name, rev in revs.items()}
    for name, content in found.items():
        (row,) = [line for line in lines if line.startswith(name)]
        for key in HEADLINE:
            value = metric(content, key)
            delta = value - metric(baseline, key)
            assert f"{format_metric(key, value)} ({format_delta(key, delta)})" in row, (name, key)
    assert "evaluate.threshold_rule: max_f1 -> cost" in shown
    assert "train.family: gradient_boosting -> logistic_regression" in shown
    assert "evaluate.importance_repeats: 5 -> 1" in shown
    order = [n for line in lines for n in EXPERIMENTS if line.startswith(n)]
    best_first = sorted(found, key=lambda n: (-found[n]["roc_auc"], n))
    assert order == best_first


@pytest.mark.pipeline
def test_the_experiments_page_opens_offline_shows_the_same_numbers_and_the_index_links_it(
    exps_project,
):
    shown = run(["churnlab", "exps"], exps_project).stdout
    page = exps_project / "reports" / "experiments.html"
    browser = Browser()
    try:
        seen = browser.check(page)
        index = browser.check(exps_project / "reports" / "index.html")
    finally:
        browser.close()
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.outside_requests == [] and seen.failed_requests == []
    words = {w.strip("();,") for line in shown.splitlines()[4:] for w in line.split()}
    numbers = {w for w in words if w[-1:].isdigit()}
    assert len(numbers) > 20 and all(n in seen.text for n in numbers)
    assert all(name in seen.text for name in EXPERIMENTS)
    assert "experiments.html" in index.local_links
    assert all((page.parent / link.split("#")[0]).is_file() for link in seen.local_links)
    assert run(["dvc", "status"], exps_project).stdout.strip().endswith("up to date.")


# --- dvc exp show, as a person sees it -----------------------------------------------------

# The columns DVC reads from metrics/headline.json, by their names in the file.
HEADLINE_COLUMNS = ["brier", "cost.model", "pr_auc", "precision", "recall", "roc_auc"]


def dvc_exp_show_in_a_terminal(project, *options, columns=WIDTH):
    """The lines of ``dvc exp show`` run in a terminal ``columns`` wide.

    DVC sees a terminal (a pty, through ``script``), draws its table and hands it to its
    pager: ``less -S``, which shows each line's first ``columns`` characters and the rest when
    scrolled right. ``DVC_PAGER=cat`` keeps the whole lines, so that both parts can be checked.
    """
    env = {**tool_env(), "COLUMNS": str(columns), "DVC_PAGER": "cat", "TERM": "xterm"}
    result = subprocess.run(
        ["script", "-qec", shlex.join(["dvc", "exp", "show", *options]), "/dev/null"],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r", "", result.stdout)
    return [line for line in text.splitlines() if line.strip()]


def column_end(header, name):
    """Where a right-justified (metric) column ends: its header's last character."""
    (found,) = re.finditer(rf"(?<= ){re.escape(name)}(?= |$)", header)
    return found.end()


def table_rows(lines, names):
    """The header line and each named row (an experiment as ``[name]``, a commit by name)."""
    (header,) = [line for line in lines if line.split()[:2] == ["Experiment", "Created"]]
    rows = {}
    for name in names:
        (rows[name],) = [line for line in lines if f"[{name}]" in line or line.split()[0] == name]
    return header, rows


@pytest.fixture(scope="module")
def exps_revs(exps_project):
    """Each experiment's git ref, and the commit they started from as its branch name."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], exps_project).stdout
    revs = {r.rsplit("/", 1)[-1]: r for r in refs.split() if len(r.split("/")) == 5}
    branch = run(["git", "branch", "--show-current"], exps_project).stdout.strip()
    return {**revs, branch: "HEAD"}


@pytest.mark.pipeline
def test_dvc_exp_show_opens_on_the_headline_metrics_of_every_experiment(exps_project, exps_revs):
    lines = dvc_exp_show_in_a_terminal(exps_project)
    assert not any("…" in line for line in lines)  # no column squeezed to an ellipsis
    header, rows = table_rows(lines, exps_revs)
    shown = header[:WIDTH].split()  # what the terminal shows before scrolling right
    assert shown[: 2 + len(HEADLINE_COLUMNS)] == ["Experiment", "Created", *HEADLINE_COLUMNS]
    for name, rev in exps_revs.items():
        headline = git_json(exps_project, rev, "metrics/headline.json")
        for column in HEADLINE_COLUMNS:
            end = column_end(header, column)
            expected = f"{metric(headline, column):.5g}"  # DVC's 5 significant digits
            cell = rows[name][: end + 1]
            assert end <= WIDTH and cell.endswith(f" {expected} "), (name, column, cell)


@pytest.mark.pipeline
def test_dvc_exp_show_only_changed_adds_the_changed_params_after_the_headline(
    exps_project, exps_revs
):
    lines = dvc_exp_show_in_a_terminal(exps_project, "--only-changed")
    assert not any("…" in line for line in lines)
    header, rows = table_rows(lines, exps_revs)
    metrics_end = column_end(header, HEADLINE_COLUMNS[-1])
    assert metrics_end <= WIDTH
    rules = {"cost-rule": "cost"}
    families = {"logistic": "logistic_regression"}
    for name in exps_revs:
        for param, value in (
            ("evaluate.threshold_rule", rules.get(name, "max_f1")),
            ("train.family", families.get(name, "gradient_boosting")),
            ("evaluate.importance_repeats", "5" if name not in EXPERIMENTS else "1"),
        ):
            start = header.index(f" {param} ") + 1  # params are left-justified
            assert start > metrics_end and rows[name][start:].split()[0] == value, (name, param)
