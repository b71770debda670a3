# ---
# jupyter:
#   kernelspec:
#     display_name: churnlab (Python 3.11)
#     language: python
#     name: churnlab
# ---

# %% [markdown]
# # 04 · Evaluate on the held-out customers
#
# The model scores the test split, which no earlier stage has looked at. The decision
# threshold is chosen by the rule in `params/evaluate.yaml` on the **out-of-fold training
# scores**, then applied unchanged to the test split. The model is compared with a
# majority-class baseline, and the quality gates in params decide whether it passes.

# %%
from churnlab.notebook import stage_params

# defaults from params/; in JupyterLab this also moves to the project root
param = stage_params("evaluate")

# %% tags=["parameters"]
paths_test: str = param("paths.test")  # test split (prepare stage)
paths_model: str = param("paths.model")  # fitted Pipeline (train stage)
paths_features: str = param("paths.features")  # its feature lists (train stage)
paths_oof_scores: str = param("paths.oof_scores")  # out-of-fold training scores (train)
paths_test_metrics: str = param("paths.test_metrics")  # output: test metrics
paths_headline_metrics: str = param("paths.headline_metrics")  # output: what DVC shows of them
paths_test_scores: str = param("paths.test_scores")  # output: each test customer's score
paths_plots: str = param("paths.plots")  # output: folder of plot data for `dvc plots`
evaluate_threshold_rule: str = param("evaluate.threshold_rule")  # max_f1 or cost
evaluate_cost_missed_churner: float = param("evaluate.cost_missed_churner")  # a missed churner
evaluate_cost_wasted_offer: float = param("evaluate.cost_wasted_offer")  # an offer to a stayer
evaluate_top_fraction: float = param("evaluate.top_fraction")  # share for lift and capture
evaluate_importance_repeats: int = param("evaluate.importance_repeats")  # permutation repeats
evaluate_importance_max_rows: int = param("evaluate.importance_max_rows")  # rows for importance
evaluate_seed: int = param("evaluate.seed")  # seed of the permutation importance
evaluate_gates: dict = param("evaluate.gates")  # quality gates: the stage fails when one is missed

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from churnlab.data import ID_COLUMN, TARGET_COLUMN
from churnlab.evaluation import (
    check_gates,
    choose_threshold,
    evaluate_scores,
    feature_importance,
    headline_metrics,
    plot_tables,
)
from churnlab.files import write_csv, write_json, write_parquet
from churnlab.model import load_model, model_input, predict_scores

pd.set_option("display.precision", 4)
model, features = load_model(Path(paths_model), Path(paths_features))
test = pd.read_parquet(paths_test)
oof = pd.read_parquet(paths_oof_scores)
labels = test[TARGET_COLUMN].to_numpy()
scores = predict_scores(model, test, features)

# %% [markdown]
# ## The decision threshold

# %%
threshold = choose_threshold(oof[TARGET_COLUMN].to_numpy(), oof["score"].to_numpy(),
                             evaluate_threshold_rule,
                             cost_missed_churner=evaluate_cost_missed_churner,
                             cost_wasted_offer=evaluate_cost_wasted_offer)
print(f"rule {evaluate_threshold_rule!r}: contact customers with a churn score >= "
      f"{threshold:.4f}")

# %% [markdown]
# ## Metrics: model against the majority-class baseline

# %%
metrics = evaluate_scores(labels, scores, oof[TARGET_COLUMN].to_numpy(), threshold,
                          evaluate_top_fraction,
                          cost_missed_churner=evaluate_cost_missed_churner,
                          cost_wasted_offer=evaluate_cost_wasted_offer)
headline = ["roc_auc", "pr_auc", "brier", "accuracy", "f1", "precision", "recall",
            "top_lift", "top_capture_rate"]
pd.DataFrame({"model": [metrics[k] for k in headline],
              "baseline": [metrics["baseline"][k] for k in headline]}, index=headline)

# %%
print(f"Of the top {evaluate_top_fraction:.0%} of customers by score, "
      f"{metrics['top_precision']:.0%} churn; they hold {metrics['top_capture_rate']:.0%} "
      f"of all churners (lift {metrics['top_lift']:.2f}).")
confusion = metrics["confusion"]
pd.DataFrame([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]],
             index=["actual: stay", "actual: churn"],
             columns=["predicted: stay", "predicted: churn"])

# %% [markdown]
# ## Plots
# The same data is written to `plots/` for `dvc plots show` and `dvc plots diff`.

# %%
tables = plot_tables(labels, scores, threshold)
importance = feature_importance(
    model, model_input(test, features["numeric"], features["categorical"]), labels,
    evaluate_importance_repeats, evaluate_importance_max_rows, evaluate_seed,
)
fig, axes = plt.subplots(2, 2, figsize=(10, 8))
axes[0][0].plot(tables["roc"]["fpr"], tables["roc"]["tpr"])
axes[0][0].plot([0, 1], [0, 1], "k--", linewidth=0.8)
axes[0][0].set(title=f"ROC (AUC {metrics['roc_auc']:.3f})", xlabel="false positive rate",
               ylabel="true positive rate")
axes[0][1].plot(tables["precision_recall"]["recall"], tables["precision_recall"]["precision"])
axes[0][1].axhline(metrics["churn_rate"], color="k", linestyle="--", linewidth=0.8)
axes[0][1].set(title=f"precision-recall (AP {metrics['pr_auc']:.3f})", xlabel="recall",
               ylabel="precision")
axes[1][0].plot(tables["calibration"]["predicted"], tables["calibration"]["observed"], "o-")
axes[1][0].plot([0, 1], [0, 1], "k--", linewidth=0.8)
axes[1][0].set(title="calibration", xlabel="mean predicted probability",
               ylabel="observed churn rate")
axes[1][1].plot(tables["gains"]["customers_contacted"], tables["gains"]["churners_captured"])
axes[1][1].plot([0, 1], [0, 1], "k--", linewidth=0.8)
axes[1][1].set(title="cumulative gains", xlabel="share of customers contacted",
               ylabel="share of churners captured")
fig.tight_layout()
plt.show()

# %%
top = importance.head(15)
fig, ax = plt.subplots(figsize=(7, 0.3 * len(top) + 1))
ax.barh(top["feature"][::-1], top["importance"][::-1], xerr=top["std"][::-1],
        color="#55a868")
ax.set_xlabel("drop in ROC AUC when the feature is shuffled")
fig.tight_layout()
plt.show()

# %%
plots = Path(paths_plots)
for name, table in tables.items():
    write_csv(plots / f"{name}.csv", table)
write_csv(plots / "feature_importance.csv", importance)
write_json(Path(paths_test_metrics), metrics)
write_json(Path(paths_headline_metrics), headline_metrics(metrics))
write_parquet(Path(paths_test_scores),
              pd.DataFrame({ID_COLUMN: test[ID_COLUMN], TARGET_COLUMN: labels, "score": scores}))

# %% [markdown]
# ## Quality gates
# The stage fails here, naming the metric, its value and the threshold, when the model
# misses a gate from `params/evaluate.yaml`.

# %% keep_output=true
# NBVAL_CHECK_OUTPUT
missed = check_gates(metrics, evaluate_gates)
assert not missed, "\n".join(missed)
print("all quality gates passed:", ", ".join(sorted(evaluate_gates)))
