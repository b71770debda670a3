"""The HTTP service (`churnlab serve`): started for real under uvicorn on a loopback port,
over the champion of the shared pipeline run."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from service import running_service

from churnlab.serving.requests import (
    RequestError,
    RequestRules,
    customers_table,
    parse_json,
)

from conftest import (
    free_port,
    pipeline_model,
    registered_model,
    run,
    set_param,
    tool_env,
)

JSON = {"Content-Type": "application/json"}


def request_customers(project: Path, params: dict, rows: int) -> tuple[list[dict], pd.DataFrame]:
    """Test customers as a caller sends them (the column names of the schema), and the
    prepared rows they come from. A number prepare filled in (``prepare.fill_missing``) is
    sent as null, as the raw data has it."""
    schema, fill = params["schema"], params["prepare"]["fill_missing"] or {}
    test = pd.read_parquet(project / "data" / "prepared" / "test.parquet").head(rows)
    customers = []
    for _, row in test.iterrows():
        customer = {schema["id_column"]: row["customer_id"]}
        for name in schema["numeric"]:
            value = float(row[name])
            customer[name] = None if name in fill and value == fill[name] else value
        for name in schema["categorical"]:
            customer[name] = str(row[name])
        customers.append(customer)
    return customers, test


@pytest.fixture(scope="module")
def service(pipeline_project, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with running_service(pipeline_project, log) as running:
        yield running
    assert "Traceback" not in log.read_text()


@pytest.fixture(scope="module")
def client(service):
    with service.client() as client:
        yield client


@pytest.mark.pipeline
def test_ready_only_after_the_warm_up(service, client, pipeline_project):
    """/health answers while the model loads, /ready only once it is loaded and warmed up."""
    assert (200, 503) in service.ready_seen, service.ready_seen
    assert service.ready_seen[-1] == (200, 200)
    assert "model ready" in service.output()
    model = client.get("/model").json()
    promotion = json.loads((pipeline_project / "reports" / "promotion.json").read_text())
    assert promotion["promoted"]  # the run's model became the champion
    champion = str(promotion["challenger"]["version"])
    assert (model["name"], model["version"]) == (promotion["registered_model"], champion)
    test_metrics = json.loads((pipeline_project / "metrics" / "test.json").read_text())
    assert model["threshold"] == pytest.approx(test_metrics["threshold"])
    assert model["metrics"]["test.roc_auc"] == pytest.approx(test_metrics["roc_auc"])
    ids = pd.read_parquet(pipeline_project / "data" / "prepared" / "train.parquet")["customer_id"]
    assert model["training_data"]["customers"] == len(ids)
    metrics = client.get("/metrics").text
    assert "churnlab_model_ready 1.0" in metrics
    assert f'version="{champion}"' in metrics


@pytest.mark.pipeline
def test_predict_equals_the_model_file(client, pipeline_project, params):
    """/predict gives models/model.skops' predict_proba, computed here independently, and the
    decision at the operating threshold; one customer or a list."""
    customers, test = request_customers(pipeline_project, params, 300)
    model, features, _ = pipeline_model(pipeline_project)
    inputs = test[[*features["numeric"], *features["categorical"]]].copy()
    for name in features["categorical"]:
        inputs[name] = inputs[name].astype(object)
    expected = model.predict_proba(inputs)[:, 1]
    threshold = json.loads((pipeline_project / "metrics" / "test.json").read_text())["threshold"]
    assert any(None in c.values() for c in customers)  # prepare.fill_missing is used

    response = client.post("/predict", json=customers)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    id_column = params["schema"]["id_column"]
    assert [p[id_column] for p in predictions] == list(test["customer_id"])
    assert np.array_equal([p["probability"] for p in predictions], expected)
    assert [p["decision"] for p in predictions] == list((expected >= threshold).astype(int))
    assert {p["model_version"] for p in predictions} == {response.json()["model"]["version"]}
    one = client.post("/predict", json=customers[7]).json()["predictions"]
    assert len(one) == 1 and one[0]["probability"] == expected[7]


def _body(customer: dict) -> bytes:
    return json.dumps(customer).encode()


def _cases(schema: dict, customer: dict, max_customers: int, max_bytes: int):
    """(name, body, content type, status, path, words of the rule) per refused request."""
    numeric = next(iter(schema["numeric"]))
    bounded = next(n for n, r in schema["numeric"].items() if r.get("min") is not None)
    category = next(n for n, allowed in schema["categorical"].items() if allowed)
    without = {k: v for k, v in customer.items() if k != numeric}
    text = _body(customer).decode()
    raw = text.replace(f'"{numeric}": {json.dumps(customer[numeric])}', f'"{numeric}": NaN')
    infinite = raw.replace("NaN", "1e999")
    low = schema["numeric"][bounded]["min"]
    return [
        ("missing field", _body(without), JSON, 422, f"body.{numeric}", "required"),
        (
            "unknown field",
            _body({**customer, "shoe_size": 42}),
            JSON,
            422,
            "body.shoe_size",
            "unknown",
        ),
        (
            "wrong type",
            _body({**customer, numeric: "five"}),
            JSON,
            422,
            f"body.{numeric}",
            "a number",
        ),
        (
            "out of range",
            _body({**customer, bounded: low - 1}),
            JSON,
            422,
            f"body.{bounded}",
            "from",
        ),
        (
            "unknown category",
            _body({**customer, category: "Zz"}),
            JSON,
            422,
            f"body.{category}",
            "one of",
        ),
        ("NaN", raw.encode(), JSON, 422, f"body.{numeric}", "finite"),
        ("infinity", infinite.encode(), JSON, 422, f"body.{numeric}", "finite"),
        (
            "null category",
            _body({**customer, category: None}),
            JSON,
            422,
            f"body.{category}",
            "category",
        ),
        ("empty list", b"[]", JSON, 422, "body", "at least one"),
        ("not a customer", b"[1]", JSON, 422, "body[0]", "object"),
        (
            "bad customer in a list",
            f"[{text}, {_body(without).decode()}]".encode(),
            JSON,
            422,
            f"body[1].{numeric}",
            "required",
        ),
        (
            "too many customers",
            f"[{','.join([text] * (max_customers + 1))}]".encode(),
            JSON,
            422,
            "body",
            f"at most {max_customers}",
        ),
        ("body over the limit", b" " * (max_bytes + 1) + text.encode(), JSON, 413, "body", "bytes"),
        ("malformed JSON", text[:-3].encode(), JSON, 400, "body", "valid JSON"),
        ("not UTF-8", b'{"a": "\xff"}', JSON, 400, "body", "UTF-8"),
        (
            "wrong content type",
            text.encode(),
            {"Content-Type": "text/plain"},
            415,
            "Content-Type",
            "application/json",
        ),
        ("no content type", text.encode(), {}, 415, "Content-Type", "application/json"),
    ]


@pytest.mark.pipeline
def test_every_bad_request_is_refused_with_the_field_and_the_rule(
    service, client, pipeline_project, schema, params
):
    customer = request_customers(pipeline_project, params, 1)[0][0]
    customer = {k: (0.0 if v is None else v) for k, v in customer.items()}
    serve = params["serve"]
    cases = _cases(schema, customer, serve["max_customers"], serve["max_body_bytes"])
    for name, body, headers, status, path, rule in cases:
        response = client.post("/predict", content=body, headers=headers)
        assert response.status_code == status, (name, response.text)
        answer = response.json()
        assert "Traceback" not in response.text and "\n" not in answer["error"], name
        first = answer["problems"][0]
        assert (first["path"], rule in first["rule"]) == (path, True), (name, answer)
        assert answer["error"].startswith(f"{path}: "), (name, answer)
    assert client.get("/predict").status_code == 405
    assert client.get("/nowhere").json() == {"error": "/nowhere: Not Found"}
    assert client.post("/predict", json=customer).status_code == 200  # still serving
    metrics = client.get("/metrics").text
    assert 'churnlab_http_requests_total{endpoint="/predict",status="422"}' in metrics
    assert 'status="500"' not in metrics


@pytest.mark.pipeline
def test_reload_fails_no_request(pipeline_project, tmp_path, params):
    """The champion alias moves while requests keep coming: the new version is picked up
    without a restart, and SIGHUP reloads; not one request fails meanwhile."""
    import mlflow

    from churnlab.tracking.settings import fluent_uri, load_settings, store_lock

    # what the service reads: the params and the registry (its artifacts stay where the run
    # wrote them, read only); a copy of the whole run would take longer than the test
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(pipeline_project / "params", project / "params")
    for name in ("dvc.yaml", "mlflow.db"):
        shutil.copy2(pipeline_project / name, project / name)
    set_param(project, "params/serve.yaml", "serve.reload_poll_seconds", 0.5)
    customers = request_customers(pipeline_project, params, 20)[0]
    name = registered_model(project)
    uri = load_settings(project, {}).uri
    store = mlflow.MlflowClient(uri)
    with store_lock(uri):
        old = store.get_model_version_by_alias(name, "champion")
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def keep_asking(service) -> None:
        with service.client() as client:
            while not stop.is_set():
                response = client.post("/predict", json=customers)
                version = response.json()["model"]["version"] if response.is_success else ""
                answers.append((response.status_code, version))

    with running_service(project, tmp_path / "serve.log") as service:
        callers = [threading.Thread(target=keep_asking, args=(service,)) for _ in range(3)]
        for caller in callers:
            caller.start()
        try:
            time.sleep(1)
            # the registry resolves the logged model through the fluent API's store
            with store_lock(uri), fluent_uri(uri):
                new = store.create_model_version(name, old.source, run_id=old.run_id)
                store.set_registered_model_alias(name, "champion", new.version)
            deadline = time.monotonic() + 120
            while not any(v == str(new.version) for _, v in answers[-5:]):
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.2)
            before = len(answers)
            service.signal(signal.SIGHUP)
            deadline = time.monotonic() + 120
            while "reloaded on SIGHUP" not in service.output():
                assert time.monotonic() < deadline, service.output()
                time.sleep(0.2)
            time.sleep(0.5)
        finally:
            stop.set()
            for caller in callers:
                caller.join()
        assert len(answers) > before
        with service.client() as client:
            metrics = client.get("/metrics").text
    assert {status for status, _ in answers} == {200}
    versions = [v for _, v in answers]
    first_new = versions.index(str(new.version))
    assert set(versions[:first_new]) == {str(old.version)}
    assert 'churnlab_model_reloads_total{outcome="loaded"} 2.0' in metrics
    assert (
        f'churnlab_model_info{{name="{name}",source="registry",version="{new.version}"}} 1.0'
        in (metrics)
    )


@pytest.mark.pipeline
def test_serve_refuses_what_it_cannot_serve(pipeline_project, tmp_path):
    """One line, non-zero exit: a missing model file, a port in use, a bad port setting, no
    champion yet (the service stops rather than stay up without a model)."""
    missing = run(["churnlab", "serve", "--model", "models/nothing.skops"], pipeline_project, False)
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "churnlab: error: params/serve.yaml: serve.model: models/nothing.skops: file not found: "
        "name a .skops model file of the project (models/model.skops after `make repro`) or "
        '"champion"'
    ]
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run(["churnlab", "serve", "--port", str(port)], pipeline_project, False)
    assert busy.returncode == 1
    assert busy.stderr.startswith(
        f"churnlab: error: params/serve.yaml: serve.port: cannot listen on 127.0.0.1:{port}"
    )
    env = {**tool_env(), "CHURNLAB_SERVE_PORT": "eighty"}
    bad = subprocess.run(
        ["churnlab", "serve"], cwd=pipeline_project, env=env, capture_output=True, text=True
    )
    assert (bad.returncode, bad.stderr) == (
        1,
        "churnlab: error: CHURNLAB_SERVE_PORT: expected a port from 1 to 65535, found 'eighty'\n",
    )
    import mlflow

    from churnlab.tracking.settings import load_settings

    fresh = tmp_path / "no-champion"  # the registry without its champion alias
    fresh.mkdir()
    shutil.copytree(pipeline_project / "params", fresh / "params")
    for name in ("dvc.yaml", "mlflow.db"):
        shutil.copy2(pipeline_project / name, fresh / name)
    mlflow.MlflowClient(load_settings(fresh, {}).uri).delete_registered_model_alias(
        registered_model(fresh), "champion"
    )
    none = run(["churnlab", "serve", "--port", str(free_port())], fresh, False, timeout=300)
    assert none.returncode == 1 and "Traceback" not in none.stderr
    assert (
        none.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "churnlab: error: params/tracking.yaml: tracking.registered_model: no champion of "
        )
    ), none.stderr


def test_request_rules_come_from_the_schema_alone():
    """Another schema, other fields: nothing in the service knows Telco's columns."""
    params = {
        "schema": {
            "id_column": "account",
            "target": "left",
            "positive_label": 1,
            "negative_label": 0,
            "numeric": {"age": {"min": 18, "max": 120}, "spend": {"nullable": True}},
            "categorical": {"plan": ["basic", "pro"], "region": None},
        },
        "prepare": {"fill_missing": {"spend": -1.0}},
    }
    rules = RequestRules.from_params(params, max_customers=2)
    good = {"account": "a1", "age": 30, "spend": None, "plan": "pro", "region": "north", "left": 1}
    columns, ids, single = customers_table(good, rules)
    assert single and ids == ["a1"]
    assert columns["spend"].tolist() == [-1.0] and columns["plan"].tolist() == ["pro"]
    with pytest.raises(RequestError) as refused:
        customers_table([good, {**good, "age": 17.5, "plan": "gold", "extra": True}], rules)
    paths = [(p.path, p.rule.split(" (")[0]) for p in refused.value.problems]
    assert paths == [
        ("body[1].extra", "a field of the schema"),
        ("body[1].age", "a number from 18 to 120"),
        ("body[1].plan", "one of basic, pro"),
    ]
    with pytest.raises(RequestError) as too_many:
        customers_table([good] * 3, rules)
    assert too_many.value.problems[0].rule.startswith("at most 2 customers")
    assert math.isinf(parse_json(b"[1e999]")[0])
    with pytest.raises(RequestError) as infinite:
        customers_table({**good, "age": parse_json(b"1e999")}, rules)
    assert (infinite.value.problems[0].path, infinite.value.problems[0].found) == (
        "body.age",
        "Infinity",
    )
    for body, found in (
        (b"[" * 100_000 + b"]" * 100_000, "nesting too deep"),
        (b'{"age": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
    ):
        with pytest.raises(RequestError) as unreadable:
            parse_json(body)
        assert unreadable.value.status == 400
        assert unreadable.value.problems[0].found.startswith(found)
    with pytest.raises(RequestError) as huge:
        customers_table({**good, "age": 10**400, "plan": 10**30}, rules)
    assert [(p.path, p.rule) for p in huge.value.problems] == [
        ("body.age", "a finite number"),
        ("body.plan", "a category (text)"),
    ]


@pytest.mark.parametrize("family", ["logistic_regression", "gradient_boosting"])
def test_numpy_scoring_equals_the_pipeline_or_is_not_used(family):
    """Each family build_model makes is scored in numpy with the Pipeline's very
    probabilities; a Pipeline of another shape is left to scikit-learn."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from churnlab.model import build_model, model_input
    from churnlab.serving.models import ServedModel, check_sample, with_fast_scorer
    from churnlab.serving.scorer import fast_scorer

    rng = np.random.default_rng(7)
    rows = 300
    frame = pd.DataFrame(
        {
            "age": rng.uniform(18, 90, rows),
            "spend": np.where(rng.random(rows) < 0.1, np.nan, rng.gamma(2.0, 50.0, rows)),
            "plan": rng.choice(["basic", "pro", "team"], rows),
            "region": rng.choice(["north", "south"], rows),
        }
    )
    labels = (frame["plan"].eq("basic") ^ (rng.random(rows) < 0.2)).astype(int)
    numeric, categorical = ["age", "spend"], ["plan", "region"]
    model = build_model(numeric, categorical, family, seed=3, gradient_boosting={"max_iter": 20})
    model.fit(model_input(frame, numeric, categorical), labels)
    served = ServedModel("m", "1", "file", 0.5, model, numeric, categorical, "x")

    checked = with_fast_scorer(served)
    assert checked.fast is not None
    sample = check_sample(checked.fast)
    assert "unknown category" in set(sample["plan"]) and np.isnan(sample["spend"]).any()
    columns = {
        name: frame[name].to_numpy(dtype=object if name in categorical else float) for name in frame
    }
    assert np.array_equal(checked.scores(columns), served.pipeline_scores(columns))
    assert np.array_equal(
        checked.scores(columns), model.predict_proba(model_input(frame, numeric, categorical))[:, 1]
    )
    one_by_one = [checked.scores({k: v[i : i + 1] for k, v in columns.items()}) for i in range(40)]
    assert np.array_equal(np.concatenate(one_by_one), served.pipeline_scores(columns)[:40])
    # the flat trees: gradient boosting's only, and taken only once they gave the same bits
    assert (checked.fast.trees is not None) == (family == "gradient_boosting")
    other = Pipeline([("scale", StandardScaler()), ("estimator", model.named_steps["estimator"])])
    assert fast_scorer(other) is None


def test_flat_trees_only_for_numeric_binary_boosting():
    """Trees that split on categories (bitsets) or score several classes are left to
    scikit-learn: FlatTrees walks numeric splits of one tree per iteration only."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression

    from churnlab.serving.scorer import flat_trees

    rng = np.random.default_rng(11)
    numbers = rng.normal(size=(200, 3))
    numbers[::7, 1] = np.nan
    two = (numbers[:, 0] > 0).astype(int)
    binary = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(numbers, two)
    trees = flat_trees(binary)
    assert trees is not None and trees.roots.size == binary.n_iter_
    assert np.array_equal(trees.probabilities(numbers), binary.predict_proba(numbers)[:, 1])
    codes = numbers.copy()
    codes[:, 2] = rng.integers(0, 4, 200)
    on_categories = HistGradientBoostingClassifier(
        max_iter=5, categorical_features=[2], random_state=0
    ).fit(codes, two)
    three = np.digitize(numbers[:, 0], [-0.5, 0.5])
    several = HistGradientBoostingClassifier(max_iter=5, random_state=0).fit(numbers, three)
    assert flat_trees(on_categories) is None
    assert flat_trees(several) is None
    # calibrated as train.calibration makes it (the estimator and its out-of-fold calibrator)
    from churnlab.model import build_model, calibrate_model, cross_validate, fit_model

    table = pd.DataFrame(numbers, columns=["a", "b", "c"]).assign(left=two)
    model = build_model(
        ["a", "b", "c"], [], "gradient_boosting", 0, gradient_boosting={"max_iter": 15}
    )
    cv = cross_validate(model, table, ["a", "b", "c"], [], "left", 3, 0)
    fitted = fit_model(model, table, ["a", "b", "c"], [], "left")
    for method in ("sigmoid", "isotonic"):
        calibrated, _ = calibrate_model(fitted, cv, two, method)
        estimator = calibrated.named_steps["estimator"]
        matrix = calibrated[:-1].transform(table[["a", "b", "c"]])
        trees = flat_trees(estimator)
        assert trees is not None and trees.calibrator is not None
        for rows in (slice(0, 1), slice(0, 32), slice(None)):
            expected = estimator.predict_proba(matrix[rows])[:, 1]
            assert np.array_equal(trees.probabilities(matrix[rows]), expected)
    assert flat_trees(LogisticRegression().fit(np.nan_to_num(numbers), two)) is None
