"""The model registry: log and register the model of the register stage, decide on its
promotion against the ``champion``, and load the champion back.

After the stage named by ``tracking.register_stage`` succeeds (its quality gates passed), the
model its caller hands over is logged with a signature, an input example and the ids of its
training customers, registered, and compared with the ``champion`` on test customers neither
model was trained on (the rules are in ``churnlab.tracking.promotion``). The aliases
(``challenger``, and ``champion`` when promoted) move as the very last step of a successful
stage (``StageRun.publish``); a stage that fails leaves them where they were and deletes the
version it registered.

The slow parts (importing MLflow and skops, loading the champion, writing the challenger as
an MLflow model) can be done ahead (``warm_up``, ``read_champion``, ``save_mlflow_model``),
while the stage's notebook runs; the libraries load only when called, not on import.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from churnlab.config import project_root
from churnlab.errors import ChurnlabError
from churnlab.tracking.promotion import (
    describe_input_change,
    input_columns,
    promotion_decision,
    promotion_record,
    unseen_customers,
    write_promotion,
)
from churnlab.tracking.settings import (
    Settings,
    display_uri,
    first_line,
    fluent_uri,
    load_settings,
    store_lock,
)

if TYPE_CHECKING:
    import pandas as pd

    from churnlab.tracking.runs import StageRun

TRAINING_IDS = "training/customer_ids.parquet"  # run artifact: whom the model was trained on
MODEL_FILE = "model.skops"  # the model inside a registered version (mlflow.sklearn, skops)
READ_NOW = "read now"  # log_and_promote's champion: not read ahead, read it from the store
# "hold": the register stage registers a challenger and leaves the champion to the cycle
HOLD_PROMOTION = "CHURNLAB_PROMOTION"


def _pinned(*names: str) -> list[str]:
    return [f"{name}=={installed_version(name)}" for name in names]


# what the register step imports, one module at a time (``warm_up_steps``)
_REGISTER_MODULES = (
    "pandas",
    "sklearn.metrics",
    "skops.io",
    "mlflow.sklearn",
    "mlflow.models",
    "churnlab.data",
    "churnlab.model",
)


def _packages_map() -> None:
    # MLflow checks pinned requirements against a map of the installed packages that it
    # builds on first use (a scan of every installed distribution): build it now too.
    with contextlib.suppress(Exception):
        from mlflow.utils.requirements_utils import _init_modules_to_packages_map

        _init_modules_to_packages_map()


def warm_up_steps() -> list:
    """What the register step uses, as steps a caller may run apart (the tracking service
    lets a stage's request in between): imports, then MLflow's map of packages."""
    import importlib

    return [
        *(lambda name=name: importlib.import_module(name) for name in _REGISTER_MODULES),
        _packages_map,
    ]


def warm_up() -> None:
    """Import what the register step uses, ahead of it (seconds in a fresh process)."""
    for step in warm_up_steps():
        step()


def _broken_version(client, name: str, version: str, exc: BaseException) -> ChurnlabError:
    try:
        where = f"{client.get_model_version_download_uri(name, version)}/{MODEL_FILE}"
    except Exception:  # the store cannot say where: the registry URI still names it
        where = f"models:/{name}/{version}"
    return ChurnlabError(
        f"{name} version {version}: the model file {where} cannot be loaded "
        f"({first_line(exc)}): it was changed or damaged after it was registered. Point the "
        "champion alias at a good version (MLflow UI, or MlflowClient."
        "set_registered_model_alias) or register a new model (`dvc repro -f evaluate`)"
    )


@contextlib.contextmanager
def _version_files(settings: Settings, client, version: str) -> Iterator[Path]:
    """The files of a registered model version, in a temporary folder."""
    import mlflow

    name = settings.registered_model
    with tempfile.TemporaryDirectory() as folder:
        with store_lock(settings.uri):  # the store's URI passed, not set: no global state
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=client.get_model_version_download_uri(name, version),
                dst_path=folder,
                tracking_uri=settings.uri,
            )
        yield Path(local)


def _training_ids(settings: Settings, client, run_id: str) -> set[str] | None:
    """The ids of the customers a registered model was trained on; None when not recorded."""
    import mlflow
    import pandas as pd

    folder = TRAINING_IDS.rpartition("/")[0]
    if not any(a.path == TRAINING_IDS for a in client.list_artifacts(run_id, folder)):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=TRAINING_IDS, dst_path=tmp, tracking_uri=settings.uri
        )
        return set(pd.read_parquet(local).iloc[:, 0].astype(str))


@dataclass(frozen=True)
class Champion:
    """The registry's champion as a promotion decision needs it, read once.

    ``inputs`` and ``model`` hold the error (a ChurnlabError naming the version and the
    file) when the version's files do not read or load: raised only if the decision needs
    them.
    """

    version: str
    inputs: list[tuple[str, str]] | ChurnlabError  # its signature's (column, type) pairs
    trained_ids: set[str] | None  # None: not recorded
    model: Any  # the fitted model, from its skops file


def read_champion(settings: Settings, client) -> Champion | None:
    """The champion (None: there is none), its files downloaded and loaded once."""
    import skops.io
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from churnlab.model import TRUSTED_TYPES

    name = settings.registered_model
    try:
        with store_lock(settings.uri):
            found = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    version = found.version
    inputs: list[tuple[str, str]] | ChurnlabError
    model: Any
    try:
        with _version_files(settings, client, version) as folder:
            try:
                signature = Model.load(str(folder / "MLmodel")).signature
                inputs = input_columns(signature) if signature else []
            except Exception as exc:
                inputs = _broken_version(client, name, version, exc)
            try:
                model = skops.io.load(folder / MODEL_FILE, trusted=TRUSTED_TYPES)
            except Exception as exc:  # skops, zip: whatever the damage, the same advice
                model = _broken_version(client, name, version, exc)
    except Exception as exc:  # the version's files are gone or cannot be read
        inputs = model = _broken_version(client, name, version, exc)
    trained_ids = _training_ids(settings, client, found.run_id)
    return Champion(version, inputs, trained_ids, model)


def _compare_with_champion(
    settings: Settings, champion: Champion | None, signature, test, inputs, scores
) -> dict[str, Any]:
    """The promotion decision against the current champion (None: there is none).

    Returns the decision's fields: ``champion_before``, ``compared_customers``,
    ``challenger_score``, ``promoted``, ``outcome`` and ``reason``.
    """
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    from churnlab.data import ID_COLUMN, TARGET_COLUMN

    scorer = {
        "roc_auc": roc_auc_score,
        "pr_auc": average_precision_score,
        "brier": brier_score_loss,
    }[settings.promotion_metric]
    labels = test[TARGET_COLUMN].to_numpy()
    found: dict[str, Any] = {
        "champion_before": None,
        "compared_customers": None,
        "challenger_score": float(scorer(labels, scores)),  # on every test customer
    }
    if champion is None:
        return {**found, "promoted": True, "outcome": "promoted", "reason": "there was no champion"}
    version = champion.version
    found["champion_before"] = {"version": int(version), "score": None}
    before = f"the champion (version {version})"
    if isinstance(champion.inputs, ChurnlabError):
        raise champion.inputs
    if champion.inputs != input_columns(signature):
        change = describe_input_change(champion.inputs, input_columns(signature))
        return {
            **found,
            "promoted": True,
            "outcome": "new lineage",
            "reason": f"{before} takes other inputs ({change}): another data schema, so a new "
            "lineage starts and the challenger becomes champion without a comparison",
        }
    if champion.trained_ids is None:
        return {
            **found,
            "promoted": True,
            "outcome": "new lineage",
            "reason": f"{before} has no record of the customers it was trained on, so no fair "
            "comparison can be made: a new lineage starts and the challenger becomes champion",
        }
    unseen, too_few = unseen_customers(
        test[ID_COLUMN], labels, champion.trained_ids, settings.promotion_min_customers
    )
    found["compared_customers"] = int(unseen.sum())
    if too_few:
        return {
            **found,
            "promoted": False,
            "outcome": "not compared",
            "reason": f"the models cannot be compared: {too_few}; {before} is kept",
        }
    if isinstance(champion.model, ChurnlabError):
        raise champion.model
    their_scores = champion.model.predict_proba(inputs[unseen])[:, 1]
    found["challenger_score"] = float(scorer(labels[unseen], scores[unseen]))
    found["champion_before"]["score"] = float(scorer(labels[unseen], their_scores))
    promoted, reason = promotion_decision(
        found["challenger_score"],
        found["champion_before"]["score"],
        settings.promotion_metric,
        settings.promotion_margin,
    )
    return {
        **found,
        "promoted": promoted,
        "outcome": "promoted" if promoted else "kept champion",
        "reason": f"{reason}, on the {int(unseen.sum())} test customers neither was trained on",
    }


@dataclass(frozen=True)
class SavedModel:
    """An MLflow model folder written for ``model`` with ``example`` as its input example,
    not yet logged (``_log_model`` gives it its identity in the store)."""

    model: Any
    example: Any  # the first rows of the test inputs
    path: Path
    keep: Any = None  # what holds the folder (a TemporaryDirectory): it lives while this does


def inputs_of(test: pd.DataFrame, features: Mapping[str, list[str]]):
    """The model's input columns of the test split, as the model takes them."""
    from churnlab.model import model_input

    return model_input(test, features["numeric"], features["categorical"])


def save_mlflow_model(model, example) -> SavedModel:
    """Write ``model`` as an MLflow model (skops, with its signature, input example and pinned
    requirements) into a temporary folder; the slow part of logging it, done ahead."""
    import mlflow.sklearn
    from mlflow.models import infer_signature

    from churnlab.model import TRUSTED_TYPES

    folder = tempfile.TemporaryDirectory(prefix="churnlab-model-")
    path = Path(folder.name) / "model"
    mlflow.sklearn.save_model(
        model,
        str(path),
        serialization_format="skops",
        skops_trusted_types=TRUSTED_TYPES,
        pyfunc_predict_fn="predict_proba",
        signature=infer_signature(example, model.predict_proba(example)),
        input_example=example,
        pip_requirements=_pinned("scikit-learn", "skops", "pandas", "numpy", "scipy"),
    )
    return SavedModel(model, example, path, folder)


def _log_model(run: StageRun, saved: SavedModel) -> str:
    """Log a saved model as the run's MLflow model; returns its ``models:/`` URI.

    What ``mlflow.sklearn.log_model`` stores, without its check that the saved model loads
    back and predicts the input example: the caller has just scored that model in memory,
    and ``load_champion`` loading a registered version is tested.
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    client = run.client
    logged = client.create_logged_model(
        run.tracker.experiment_id(), name="model", source_run_id=run.run_id
    )
    try:
        mlmodel = saved.path / "MLmodel"
        content = Model.load(str(mlmodel)).to_dict()
        content.update(  # the identity mlflow.sklearn.log_model gives it
            artifact_path=logged.artifact_location,
            model_uuid=logged.model_id,
            model_id=logged.model_id,
            run_id=run.run_id,
        )
        Model.from_dict(content).save(str(mlmodel))
        client.log_model_artifacts(logged.model_id, str(saved.path))
        client.log_outputs(run.run_id, [LoggedModelOutput(logged.model_id, step=0)])
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(logged.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    return f"models:/{logged.model_id}"


def _register(settings: Settings, client, model_uri: str, run_id: str) -> str:
    """A new version of the registered model (created when missing) from ``model_uri``."""
    from mlflow.exceptions import MlflowException

    name = settings.registered_model
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = model_uri.removeprefix("models:/")
    # the SQL registry looks the logged model up through MLflow's global tracking URI
    with fluent_uri(settings.uri):
        version = client.create_model_version(name, model_uri, run_id=run_id, model_id=model_id)
    return version.version


def log_and_promote(
    run: StageRun,
    model,
    features: Mapping[str, list[str]],
    test: pd.DataFrame,
    training: pd.DataFrame,
    promotion_path: Path,
    champion: Champion | None | str = READ_NOW,
    saved: SavedModel | None = None,
) -> dict[str, Any]:
    """Decide on promotion, log and register the model, and hold the alias moves for the end.

    The challenger and the champion are compared with ``tracking.promotion.metric`` only on
    test customers neither of them was trained on (the ids the champion was trained on are
    an artifact of its run). A champion that takes other input columns, or whose training
    customers are not recorded, starts a new lineage: the challenger becomes champion. With
    too few customers to compare on, the champion is kept. The decision goes to
    ``promotion_path`` and onto the run as tags; the aliases move only when the whole stage
    has succeeded (``StageRun.publish``).

    Args:
        run: the register stage's run.
        model: the fitted model the stage wrote (the challenger).
        features: its ``numeric`` and ``categorical`` input columns.
        test: the test split, with the id and target columns.
        training: the ids of the customers the model was trained on (one column), kept as
            an artifact of the run for later comparisons.
        promotion_path: where the promotion record goes.
        champion: the champion as ``read_champion`` read it (ahead, while the notebook ran),
            or ``READ_NOW`` to read it here.
        saved: ``model`` as ``save_mlflow_model`` wrote it ahead (used only when it was
            written for this very model object and input example), or None.

    Returns:
        The promotion record, as written.
    """
    from mlflow.models import Model

    settings = run.tracker.settings
    client = run.client
    name = settings.registered_model
    inputs = inputs_of(test, features)
    example = inputs.head(5)
    if saved is None or saved.model is not model or not saved.example.equals(example):
        saved = save_mlflow_model(model, example)
    signature = Model.load(str(saved.path / "MLmodel")).signature
    scores = model.predict_proba(inputs)[:, 1]  # the challenger, from memory
    if champion is READ_NOW:
        champion = read_champion(settings, client)
    found = _compare_with_champion(settings, champion, signature, test, inputs, scores)
    if os.environ.get(HOLD_PROMOTION, "").strip().lower() == "hold" and champion is not None:
        found = {  # the continuous-training cycle decides on its own evidence (its rule)
            **found,
            "promoted": False,
            "outcome": "held",
            "reason": f"{HOLD_PROMOTION}=hold: registered as challenger only; `churnlab cycle` "
            f"decides on the champion (the stage's own comparison: {found['reason']})",
        }
    with tempfile.TemporaryDirectory() as folder:
        ids_file = Path(folder) / TRAINING_IDS.rpartition("/")[2]
        training.to_parquet(ids_file, index=False)
        with run.tracker.locked():
            model_uri = _log_model(run, saved)
            client.log_artifact(run.run_id, str(ids_file), TRAINING_IDS.rpartition("/")[0])
            version = _register(settings, client, model_uri, run.run_id)
            run.registered = (name, version)  # deleted again if the stage fails from here on
    decision = promotion_record(settings, found, version, int(len(test)))
    run.aliases = {"challenger": version, **({"champion": version} if found["promoted"] else {})}
    write_promotion(promotion_path, decision)
    run.set_tags(
        {
            "promotion.decision": decision["outcome"],
            "promotion.reason": decision["reason"],
            "registry.version": version,
        }
    )
    run.log_files([promotion_path])
    return decision


def load_champion(root: Path | None = None):
    """The registered model with the alias ``champion``, as an MLflow pyfunc model.

    ``model.predict(frame)`` gives, per customer, the probabilities of staying and leaving.

    Raises:
        ChurnlabError: no store, no champion yet, or a model file that does not load
            (changed or damaged after it was registered), naming the version and the file.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    root = root or project_root()
    settings = load_settings(root)
    name = settings.registered_model
    client = mlflow.MlflowClient(settings.uri)
    try:
        with store_lock(settings.uri):
            version = client.get_model_version_by_alias(name, "champion").version
    except MlflowException as exc:
        raise ChurnlabError(
            f"no champion of '{name}' in {display_uri(settings.uri)}: {first_line(exc)}"
        ) from None
    with _version_files(settings, client, version) as folder:
        try:
            return mlflow.pyfunc.load_model(str(folder))
        except Exception as exc:  # skops, zip, YAML: whatever the damage, the same advice
            raise _broken_version(client, name, version, exc) from None
