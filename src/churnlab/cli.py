"""The ``churnlab`` command: what the DVC stages and the Makefile call."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
from pathlib import Path

from churnlab.config import get_key, load_params, project_root
from churnlab.errors import ChurnlabError
from churnlab.files import os_error_message

# jsonschema, imported by nbformat (so by papermill and nbconvert), builds 38 lark grammars
# on import for its `iri` format checks when rfc3987_syntax is installed (JupyterLab's
# jupyter-events brings it): 1.0 s of every stage's start-up. No notebook schema uses those
# formats; without the module jsonschema leaves them unchecked.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[assignment]

# Each command imports its own modules when it runs. A dispatcher is the one place where
# imports stay inside functions: `churnlab --help` stays instant, a stage's process loads
# only the code it runs, and tests/test_stage_deps.py reads each handler's imports as the
# code its DVC stage depends on.


@contextlib.contextmanager
def _tracked(root, default_stage: str):
    """Record a stage that is not a notebook (fetch, report) like the notebook stages: the
    store is opened in the background while the stage works (MLflow's import and its store
    take seconds); when it cannot be reached or recording fails, the stage fails and its
    earlier outputs come back."""
    from churnlab.pipeline.guard import OutputGuard
    from churnlab.pipeline.stages import load_stage
    from churnlab.tracking.runs import Tracker, record_stage, tracked_stage

    tracking = Tracker.open_in_background(root)
    stage = load_stage(root, os.environ.get("DVC_STAGE", default_stage), notebook=False)
    with OutputGuard(root, stage.name, stage.outs), tracked_stage(root, stage, tracking) as pending:
        yield
        run = pending.result()  # an unreachable store raises here, inside the guard
        if run is not None:
            record_stage(run, root, stage)


def _fetch(args) -> None:
    from churnlab.fetch import check_versioned, fetch_raw
    from churnlab.param_rules import check_params
    from churnlab.pipeline.stages import check_unread_params
    from churnlab.split import SplitPlan

    root = project_root()
    check_unread_params(root)
    check_params(root)
    params = load_params(root)
    check_versioned(get_key(params, "data.source", "params/data.yaml"), root)
    target = root / get_key(params, "paths.raw", "params/paths.yaml")
    with _tracked(root, "fetch"):
        digest = fetch_raw(
            get_key(params, "data.source", "params/data.yaml"),
            get_key(params, "data.sha256", "params/data.yaml"),
            target,
            root,
            schema=get_key(params, "schema", "params/data.yaml"),
            plan=SplitPlan(
                test_size=get_key(params, "prepare.test_size", "params/prepare.yaml"),
                seed=get_key(params, "prepare.seed", "params/prepare.yaml"),
                cv_folds=get_key(params, "train.cv_folds", "params/train.yaml"),
                sample_rows=get_key(params, "prepare.sample_rows", "params/prepare.yaml"),
            ),
        )
    print(
        f"[fetch] {target.relative_to(root)}: sha256 {digest}; matches params/data.yaml schema",
        file=sys.stderr,
    )


def _run(args) -> None:
    from churnlab.pipeline.execute import run_stage
    from churnlab.pipeline.stages import parse_overrides

    run_stage(args.stage, overrides=parse_overrides(args.set or []))


def _report(args) -> None:
    from churnlab.param_rules import check_params
    from churnlab.pipeline.stages import check_unread_params
    from churnlab.report.pages import build_reports

    root = project_root()
    check_unread_params(root)
    check_params(root)
    with _tracked(root, "report"):
        written = build_reports(root)
    print(f"[report] wrote {', '.join(str(p.relative_to(root)) for p in written)}", file=sys.stderr)
    print(f"open file://{written[0]}")


def _baseline(args) -> None:
    from churnlab.report.baseline import write_baseline

    root = project_root()
    target = write_baseline(root)
    print(
        f"[baseline] the current model is the baseline: {target.relative_to(root)} "
        "(commit it; `dvc repro report` compares later models with it)",
        file=sys.stderr,
    )


def _plots_template(args) -> None:
    from churnlab.report.plots_template import write_plots_template

    root = project_root()
    target = write_plots_template(root)
    print(
        f"[plots-template] {target.relative_to(root)}: vega, vega-lite and vega-embed inline "
        "(`dvc plots show` and `dvc plots diff` pages open offline)",
        file=sys.stderr,
    )


def _exps(args) -> None:
    from churnlab.report.experiments import show_experiments

    root = project_root()
    table, page = show_experiments(root)
    print(table)
    print(f"open file://{page}", file=sys.stderr)


def _simulate(args) -> None:
    from churnlab.data import TableSpec, read_table, validate_table
    from churnlab.monitoring.months import MONITOR_FILE
    from churnlab.monitoring.simulate import simulate_year, write_year
    from churnlab.param_rules import check_params

    root = project_root()
    check_params(root)
    params = load_params(root)
    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    settings = get_key(params, "monitor.simulate", MONITOR_FILE)
    source = root / get_key(params, "paths.raw", "params/paths.yaml")
    if not source.exists():
        raise ChurnlabError(
            f"{source.relative_to(root)}: file not found: months are drawn from the raw data; "
            "run `make repro` (or `churnlab fetch`) first"
        )
    raw = read_table(source)
    typed = validate_table(raw, spec, str(source.relative_to(root)))
    batches = root / get_key(params, "monitor.batches", MONITOR_FILE)
    labels = root / get_key(params, "monitor.labels", MONITOR_FILE)
    if args.month:
        _simulate_large(args, root, settings, raw, typed, spec, (batches, labels))
        return
    months, truth = simulate_year(raw, typed, spec, settings)
    written = write_year(months, truth, batches, labels, f".{settings['format']}")
    print(
        f"[simulate] {len(months)} months of {settings['customers']} customers in "
        f"{batches.relative_to(root)}/ and their labels in {labels.relative_to(root)}/; ground "
        f"truth {written[-1].relative_to(root)} (version them: dvc add "
        f"{batches.relative_to(root)} {labels.relative_to(root)})",
        file=sys.stderr,
    )


def _simulate_large(args, root, settings, raw, typed, spec, folders) -> None:
    """``churnlab simulate --month M --customers N``: one partitioned month (compute engine)."""
    from contextlib import nullcontext

    from churnlab.compute.cluster import ComputeSettings, connect
    from churnlab.compute.generate import MonthPlan, generate_month
    from churnlab.monitoring.months import MONITOR_FILE, check_month
    from churnlab.monitoring.simulate import scenarios_from_params

    month = check_month(args.month, "--month")
    if args.customers < 1:
        raise ChurnlabError(f"--customers: expected a positive number, found {args.customers}")
    compute = ComputeSettings.load(root)
    scenarios = scenarios_from_params(settings.get("scenarios") or [], spec)
    plan = MonthPlan(month, args.customers, compute.partition_rows, int(settings["seed"]))
    targets = tuple(folder / f"{month}.parquet" for folder in folders)
    with connect(compute) if compute.on_cluster else nullcontext() as client:
        count = generate_month(raw, typed, spec, scenarios, plan, targets, client, compute)
    where = "on the Dask cluster" if compute.on_cluster else "here"
    print(
        f"[simulate] {month}: {count} customers in {plan.partitions} partitions ({where}) in "
        f"{targets[0].relative_to(root)}/ and their labels in {targets[1].relative_to(root)}/ "
        f"(seed {MONITOR_FILE} monitor.simulate.seed)",
        file=sys.stderr,
    )


def _monitor(args) -> None:
    from contextlib import nullcontext

    from churnlab.compute.cluster import ComputeSettings, connect
    from churnlab.compute.monitor import monitor_month_on_cluster
    from churnlab.monitoring.months import batch_months, check_month
    from churnlab.monitoring.verdict import (
        Monitor,
        MonitorParams,
        describe_violation,
        locate_month,
        monitor_month,
    )
    from churnlab.param_rules import check_params

    root = project_root()
    check_params(root)
    settings = MonitorParams.from_params(load_params(root))
    if args.all:
        months = [m for m in batch_months(root / settings.batches) if m > settings.reference_month]
        if not months:
            raise ChurnlabError(
                f"{settings.batches}: no month after {settings.reference_month} "
                "(YYYY-MM.csv or .parquet): put batches there, or run `churnlab simulate`"
            )
    elif not args.months:
        raise ChurnlabError("MONTH: name a month (YYYY-MM), or --all for every month")
    else:
        months = [check_month(m) for m in args.months]
        for month in months:  # what can be told without the champion, before loading it
            locate_month(root, settings, month)
    compute = ComputeSettings.load(root)
    # the cluster is reached (or refused) before the champion loads and before any verdict
    with connect(compute) if compute.on_cluster else nullcontext() as client:
        monitor = Monitor.open(root)
        failed, unjudged = [], []
        for month in months:
            try:
                if client is None:
                    verdict, target = monitor_month(monitor, month)
                else:
                    verdict, target = monitor_month_on_cluster(monitor, month, client, compute)
            except ChurnlabError as exc:
                if not args.all:
                    raise
                # the batch job goes on with the other months and fails at the end
                print(f"churnlab: error: {exc}", file=sys.stderr)
                unjudged.append(month)
                continue
            print(f"[monitor] {target.relative_to(root)}: {verdict['summary']}", file=sys.stderr)
            if not verdict["quality"]["passed"]:
                failed.append(verdict)
    if args.all:
        from churnlab.monitoring.page import write_monitoring_outputs

        for path in write_monitoring_outputs(root):
            print(f"[monitor] {path.relative_to(root)}", file=sys.stderr)
    if unjudged:
        raise ChurnlabError(
            f"{settings.batches}: {len(unjudged)} of {len(months)} months could not be judged "
            f"({', '.join(unjudged)}; above); the others have their verdicts"
        )
    if failed and not args.all:
        first = failed[0]
        violations = first["quality"]["violations"]
        more = f" (and {len(violations) - 1} more problems)" if len(violations) > 1 else ""
        raise ChurnlabError(
            f"{first['batch']['path']}: {describe_violation(violations[0])}{more}: the month "
            f"failed data quality; its verdict {settings.verdicts}/{first['month']}.json "
            "records it (never to be used for "
            "training): fix the month's file and run again"
        )


def _score(args) -> None:
    import time
    from contextlib import ExitStack

    from churnlab.compute.cluster import ComputeSettings, connect
    from churnlab.compute.score import input_parts, read_input, score_on_cluster
    from churnlab.data import TableSpec
    from churnlab.param_rules import check_params
    from churnlab.serving.rows import extra_columns
    from churnlab.serving.score import (
        ScoreSettings,
        ScoringModel,
        _format,
        load_file_model,
        rejects_path,
        score_file,
    )

    root = project_root()
    check_params(root)
    params = load_params(root)
    spec = TableSpec.from_params(get_key(params, "schema", "params/data.yaml"))
    settings = ScoreSettings.from_params(params)
    rejects = args.rejects or rejects_path(args.output, settings.rejects)
    compute = ComputeSettings.load(root)
    started = time.perf_counter()
    raw = None
    if compute.on_cluster:
        # the workers read the parts; here only the folder is checked, before the model loads
        input_parts(args.input)
        _format(args.output, "OUTPUT")
    else:
        raw = read_input(args.input)  # the input's problems show before the model loads
        print(
            f"[score] read {len(raw):,} rows of {args.input} "
            f"({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
        )
        extra = extra_columns(raw.columns, spec)
        if extra:
            print(
                f"[score] ignored: column(s) {extra} (not in params/data.yaml schema)",
                file=sys.stderr,
            )

    def load_model() -> ScoringModel:
        if args.model:
            model = load_file_model(root, args.model, params)
        else:
            from churnlab.monitoring.champion import load_champion

            champion = load_champion(root, args.version)
            model = ScoringModel.from_champion(champion, None if args.version else "champion")
        print(f"[score] model: {model.label}, threshold {model.threshold:.4f}", file=sys.stderr)
        return model

    def progress(done: int, total: int) -> None:
        if total > settings.chunk_rows:  # one line for a small file is noise
            print(f"[score] scored {done:,} of {total:,}", file=sys.stderr)

    fill_missing = get_key(params, "prepare", "params/prepare.yaml").get("fill_missing")
    with ExitStack() as stack:
        if compute.on_cluster:
            # an unreachable scheduler is one line before the model loads or anything is written
            client = stack.enter_context(connect(compute))
            counts = score_on_cluster(
                args.input,
                args.output,
                rejects,
                spec,
                load_model(),
                settings,
                fill_missing,
                client,
                compute,
            )
        else:
            counts = score_file(
                args.input,
                args.output,
                rejects,
                spec,
                load_model,
                settings,
                fill_missing,
                raw=raw,
                progress=progress,
            )
    where = " on the Dask cluster" if compute.on_cluster else ""
    print(
        f"[score] {args.output}: {counts['scored']:,} customers scored{where}; {rejects}: "
        f"{counts['rejected']:,} rows rejected ({counts['rejected'] / counts['rows']:.1%}) "
        f"in {time.perf_counter() - started:.1f} s",
        file=sys.stderr,
    )


def _cycle(args) -> None:
    from churnlab.cycle.notify import notifier
    from churnlab.cycle.run import run_cycle

    root = project_root()
    decision = run_cycle(root, args.month, notify=notifier(load_params(root)))
    record = decision.record
    if decision.already_done:
        print(
            f"[cycle] {record['month']}: already done ({record['outcome']}, rule "
            f"{record['rule']}); nothing changed",
            file=sys.stderr,
        )
        return
    print(
        f"[cycle] {record['month']}: {record['outcome']} (rule {record['rule']}; champion "
        f"v{record['champion_before']['version']} -> v{record['champion_after']['version']}): "
        f"{record['reason']}",
        file=sys.stderr,
    )


def _history(args) -> None:
    from churnlab.cycle.decisions import history_table, read_log
    from churnlab.cycle.rule import CYCLE_FILE

    root = project_root()
    log = get_key(load_params(root), "cycle.log", CYCLE_FILE)
    decisions = read_log(root / log)
    if not decisions:
        print(f"[history] {log}: no decision yet (run `churnlab cycle MONTH`)", file=sys.stderr)
        return
    print(history_table(decisions, width=args.width))


def _schedule(args) -> None:
    from churnlab.cycle.schedule import cron_line, month_of, systemd_units, write_units

    root = project_root()
    if args.install == "cron":
        print(cron_line(root))
        print(
            "[schedule] add it to your crontab: (crontab -l; bin/churnlab schedule --install "
            "cron) | crontab -   (set the webhook's variable at the top of the crontab)",
            file=sys.stderr,
        )
        return
    if args.install == "systemd":
        folder = Path(args.unit_dir).expanduser()
        written = write_units(systemd_units(root), folder)
        print(
            f"[schedule] wrote {', '.join(str(p) for p in written)}; start the timer with\n"
            "  systemctl --user daemon-reload && systemctl --user enable --now "
            f"{written[-1].name}",
            file=sys.stderr,
        )
        return
    from datetime import date

    from churnlab.cycle.schedule import run_due

    try:
        today = date.fromisoformat(args.today) if args.today else date.today()
    except ValueError:
        raise ChurnlabError(
            f"--today: expected a date as YYYY-MM-DD (2026-03-01), found {args.today!r}"
        ) from None
    done, batches, reference_month, run = _cycle_state(root, today)
    due = run_due(today, run, done, batches, reference_month)
    if not due:
        last = max([reference_month, *done])
        print(
            f"[schedule] nothing due on {today}: the last month done is {last}, and no later "
            f"batch up to {month_of(today)} is there",
            file=sys.stderr,
        )


def _cycle_state(root, today):
    """What the schedule needs from the cycle: months done, batches, and the cycle itself."""
    from datetime import UTC, datetime

    from churnlab.cycle.decisions import read_log
    from churnlab.cycle.notify import notifier
    from churnlab.cycle.run import run_cycle
    from churnlab.monitoring.months import MONITOR_FILE, batch_months
    from churnlab.param_rules import check_params

    check_params(root)
    params = load_params(root)
    log = root / get_key(params, "cycle.log", "params/cycle.yaml")
    done = [decision["month"] for decision in read_log(log)]
    batches = batch_months(root / get_key(params, "monitor.batches", MONITOR_FILE))
    reference_month = get_key(params, "monitor.reference_month", MONITOR_FILE)
    notify = notifier(params)

    def run(month: str) -> None:
        print(f"[schedule] {month} is due: churnlab cycle {month}", file=sys.stderr)
        now = datetime(today.year, today.month, today.day, tzinfo=UTC)
        run_cycle(root, month, clock=lambda: now, notify=notify)

    return done, batches, reference_month, run


def _replay(args) -> None:
    import platform
    import tempfile
    from datetime import UTC, datetime

    from churnlab.cycle.replay import DRAWN, replace_block, results_markdown, run_replay
    from churnlab.cycle.replay_page import write_replay_outputs

    root = project_root()
    with tempfile.TemporaryDirectory(prefix="churnlab-replay-") as folder:
        scratch = Path(args.keep).resolve() if args.keep else Path(folder)
        if scratch.exists() and any(scratch.iterdir()):
            raise ChurnlabError(f"--keep: {scratch}: expected an empty or new folder")
        scratch.mkdir(parents=True, exist_ok=True)
        result = run_replay(root, scratch, echo=lambda line: print(line, file=sys.stderr))
    for path in write_replay_outputs(root, result):
        print(f"[replay] {path.relative_to(root)}", file=sys.stderr)
    settings = result["settings"]
    text = results_markdown(
        result["figures"],
        {
            "months": len(result["months"]),
            "customers": settings.simulate["customers"],
            "when": datetime.now(UTC).strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work",
            "label_lag": settings.label_lag,
            "within_months": settings.within_months,
            "draw_from": DRAWN[settings.draw_from],
        },
    )
    print(text)
    if args.results:
        target = Path(args.results)
        body = target.read_text() if target.is_file() else ""
        target.write_text(replace_block(body, text))
        print(f"[replay] the acceptance figures are in {args.results}", file=sys.stderr)


def _server(args) -> None:
    from churnlab.tracking import server

    root = project_root()
    if args.action == "stop":
        server.stop(root)
        print("[server] stopped", file=sys.stderr)
        return
    url = server.start(root, db_port=args.db_port, port=args.port)
    print(
        f"[server] MLflow on PostgreSQL at {url} (data, password file and logs in "
        f"{server.SERVER_DIR}/); log the pipeline to it with\n"
        f"  export MLFLOW_TRACKING_URI={url}",
        file=sys.stderr,
    )


def _ui(args) -> None:
    from churnlab.tracking.settings import display_uri, load_settings

    root = project_root()
    settings = load_settings(root)
    if not settings.uri.startswith("sqlite:///"):
        print(f"the tracking store is a server: open {display_uri(settings.uri)}")
        return
    print(f"[ui] MLflow UI over {settings.uri} at http://127.0.0.1:{args.port}", file=sys.stderr)
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    os.execv(
        mlflow,
        [
            mlflow,
            "ui",
            "--backend-store-uri",
            settings.uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ],
    )


def _serve(args) -> None:
    from churnlab.param_rules import check_params
    from churnlab.serving.app import serve
    from churnlab.serving.settings import serve_settings

    root = project_root()
    check_params(root)
    params = load_params(root)
    given = {"host": args.host, "port": args.port, "model": args.model}
    serve(root, serve_settings(params, os.environ, given), params)


def _export_model(args) -> None:
    from churnlab.serving.export import export_champion, export_workspace

    root = project_root()
    target = Path(args.folder).resolve()
    export = export_champion if args.source == "champion" else export_workspace
    what = export(root, target)
    print(f"[export-model] {what} in {target}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="churnlab", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="put the raw data at paths.raw (params/data.yaml)")
    fetch.set_defaults(handler=_fetch)
    run = commands.add_parser("run", help="run one notebook stage of dvc.yaml with papermill")
    run.add_argument("stage", help="the stage name in dvc.yaml")
    run.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one param key the stage reads (repeatable)",
    )
    run.set_defaults(handler=_run)
    report = commands.add_parser(
        "report", help="build reports/index.html and the model card from the pipeline's outputs"
    )
    report.set_defaults(handler=_report)
    baseline = commands.add_parser(
        "baseline", help="make the current model the baseline the report compares with"
    )
    baseline.set_defaults(handler=_baseline)
    plots = commands.add_parser(
        "plots-template",
        help="write the offline page template for `dvc plots show/diff` (.dvc/config names it)",
    )
    plots.set_defaults(handler=_plots_template)
    exps = commands.add_parser(
        "exps",
        help="compare the DVC experiments with their baseline (terminal, reports/experiments.html)",
    )
    exps.set_defaults(handler=_exps)
    simulate = commands.add_parser(
        "simulate",
        help="write a seeded year of monthly batches with drift scenarios (params/monitor.yaml)",
    )
    simulate.add_argument(
        "--month",
        metavar="MONTH",
        help="instead of the year: one large month (YYYY-MM) as a partitioned Parquet dataset, "
        "drawn where params/compute.yaml says (docs/scale-out.md)",
    )
    simulate.add_argument(
        "--customers", type=int, default=1_000_000, help="customers of --month (1000000)"
    )
    simulate.set_defaults(handler=_simulate)
    monitor = commands.add_parser(
        "monitor", help="judge months of new customers against the champion (monitoring/)"
    )
    monitor.add_argument("months", nargs="*", metavar="MONTH", help="a month, YYYY-MM")
    monitor.add_argument(
        "--all",
        action="store_true",
        help="every month in the batch folder (monitor.batches), then the page "
        "reports/monitoring.html and monitoring/metrics.prom",
    )
    monitor.set_defaults(handler=_monitor)
    score = commands.add_parser(
        "score",
        help="score a CSV or Parquet file of customers with the champion (params/score.yaml)",
    )
    score.add_argument(
        "input",
        type=Path,
        metavar="INPUT",
        help="customers, .csv or .parquet, or a folder of part-*.parquet files",
    )
    score.add_argument(
        "output",
        type=Path,
        metavar="OUTPUT",
        help="id, probability, decision, model_version (.csv or .parquet)",
    )
    which = score.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        type=Path,
        metavar="PATH",
        help="a model file (models/model.skops) instead of the registry's champion",
    )
    which.add_argument(
        "--version", type=int, metavar="N", help="registered version N instead of the champion"
    )
    score.add_argument(
        "--rejects",
        type=Path,
        metavar="PATH",
        help="the rejected rows' file (default: score.rejects in params/score.yaml)",
    )
    score.set_defaults(handler=_score)
    service = commands.add_parser(
        "serve", help="the HTTP service: POST /predict with the champion (params/serve.yaml)"
    )
    service.add_argument("--host", help="address to listen on (serve.host)")
    service.add_argument("--port", type=int, help="port to listen on (serve.port)")
    service.add_argument(
        "--model", help='"champion" (the registry alias) or a .skops model file (serve.model)'
    )
    service.set_defaults(handler=_serve)
    export = commands.add_parser(
        "export-model",
        help="write the champion (or the workspace's model) into FOLDER for the container image",
    )
    export.add_argument("folder", help="where: models/model.skops and metrics/test.json in it")
    export.add_argument(
        "--source",
        choices=["champion", "workspace"],
        default="champion",
        help="the registry's champion (default) or models/model.skops of the last `make repro`",
    )
    export.set_defaults(handler=_export_model)
    cycle = commands.add_parser(
        "cycle",
        help="one month of continuous training: monitor, decide, retrain, promote, record "
        "(params/cycle.yaml)",
    )
    cycle.add_argument("month", metavar="MONTH", help="the month whose batch came in, YYYY-MM")
    cycle.set_defaults(handler=_cycle)
    history = commands.add_parser("history", help="the cycle's decision log as a table")
    history.add_argument("--width", type=int, default=70, help="characters of each reason")
    history.set_defaults(handler=_history)
    schedule = commands.add_parser(
        "schedule",
        help="run the cycle for every month that is due (or --install a daily cron/systemd job)",
    )
    schedule.add_argument(
        "--install",
        choices=["cron", "systemd"],
        help="print the crontab line, or write a systemd user timer and service",
    )
    schedule.add_argument(
        "--unit-dir",
        default="~/.config/systemd/user",
        help="where --install systemd writes its units (~/.config/systemd/user)",
    )
    schedule.add_argument("--today", metavar="YYYY-MM-DD", help="the clock's date (default: today)")
    schedule.set_defaults(handler=_schedule)
    replay = commands.add_parser(
        "replay",
        help="a simulated year through the real cycle in a scratch copy: reports/replay.html "
        "and the acceptance figures (params/replay.yaml)",
    )
    replay.add_argument(
        "--results", metavar="FILE", help="write the acceptance figures into FILE (markers)"
    )
    replay.add_argument(
        "--keep", metavar="DIR", help="run the copy in DIR (new or empty) and keep it"
    )
    replay.set_defaults(handler=_replay)
    serve = commands.add_parser(
        "server", help="start or stop the team MLflow server on PostgreSQL (localhost)"
    )
    serve.add_argument("action", choices=["start", "stop"])
    serve.add_argument("--port", type=int, default=5000, help="MLflow's port (5000)")
    serve.add_argument("--db-port", type=int, default=5433, help="PostgreSQL's port (5433)")
    serve.set_defaults(handler=_server)
    ui = commands.add_parser("ui", help="the MLflow UI over the project's embedded store")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(handler=_ui)
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except ChurnlabError as exc:
        print(f"churnlab: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a folder not writable, a full disk: what to do, not a traceback
        print(f"churnlab: error: {os_error_message(exc, Path.cwd())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("churnlab: interrupted: earlier outputs restored", file=sys.stderr)
        return 130
    return 0


def console() -> None:
    """The installed ``churnlab`` command: :func:`main` (or, for a stage command run by
    DVC, the project's warm interpreter: ``churnlab.pipeline.warm``), then a quick exit."""
    from churnlab.pipeline.warm import run_warm

    code = run_warm(sys.argv[1:])
    if code is None:
        code = main()
        finish()
    os._exit(code)


def finish() -> None:
    """End the process's work without the interpreter's teardown.

    A stage's process holds pandas, scikit-learn, MLflow and SQLAlchemy, and the interpreter
    tears their modules down one by one when it exits: 0.5 to 1.3 s per stage after the work
    is done, for nothing. So, in the order the interpreter itself follows, the command waits
    for its remaining threads, runs the exit handlers (logging's, MLflow's) and flushes; the
    caller then leaves with ``os._exit``.
    """
    # thread-pool workers (a Dask client leaves some) end only when the interpreter's
    # thread-exit hooks run, before it joins threads: run them first, as it does
    for hook in reversed(list(getattr(threading, "_threading_atexits", []))):
        hook()
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
            stream.flush()


if __name__ == "__main__":
    console()
