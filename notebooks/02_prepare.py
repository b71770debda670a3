# ---
# jupyter:
#   kernelspec:
#     display_name: churnlab (Python 3.11)
#     language: python
#     name: churnlab
# ---

# %% [markdown]
# # 02 · Prepare: clean, check and split
#
# The raw table is checked against the data description in `params/data.yaml` (pandera:
# every violation is reported at once), cleaned, and split into a training and a test set,
# stratified on churn and seeded.

# %% tags=["parameters"]
paths_raw: str = "data/raw/churn.csv"  # raw customer table, written by the fetch stage
paths_train: str = "data/prepared/train.parquet"  # output: training split
paths_test: str = "data/prepared/test.parquet"  # output: test split
paths_prepare_summary: str = "metrics/prepare.json"  # output: row counts and churn rates
schema: dict = {
    "id_column": "customerID",
    "target": "Churn",
    "positive_label": "Yes",
    "negative_label": "No",
    "numeric": {
        "tenure": {"min": 0, "max": 120},
        "MonthlyCharges": {"min": 0, "max": 1000},
        "TotalCharges": {"min": 0, "max": 100000, "nullable": True},
    },
    "categorical": {
        "gender": ["Female", "Male"],
        "SeniorCitizen": [0, 1],
        "Partner": ["Yes", "No"],
        "Dependents": ["Yes", "No"],
        "PhoneService": ["Yes", "No"],
        "MultipleLines": ["Yes", "No", "No phone service"],
        "InternetService": ["DSL", "Fiber optic", "No"],
        "OnlineSecurity": ["Yes", "No", "No internet service"],
        "OnlineBackup": ["Yes", "No", "No internet service"],
        "DeviceProtection": ["Yes", "No", "No internet service"],
        "TechSupport": ["Yes", "No", "No internet service"],
        "StreamingTV": ["Yes", "No", "No internet service"],
        "StreamingMovies": ["Yes", "No", "No internet service"],
        "Contract": ["Month-to-month", "One year", "Two year"],
        "PaperlessBilling": ["Yes", "No"],
        "PaymentMethod": [
            "Electronic check",
            "Mailed check",
            "Bank transfer (automatic)",
            "Credit card (automatic)",
        ],
    },
}  # the data description (params/data.yaml)
prepare_seed: int = 20240601  # split seed (params/prepare.yaml)
prepare_test_size: float = 0.2  # share of customers held out for testing
prepare_fill_missing: dict = {"TotalCharges": 0.0}  # values for blank numeric cells
prepare_sample_rows = None  # int: keep this many rows (small-data profile); None: all

# %%
from pathlib import Path

from churnlab.data import ID_COLUMN, TARGET_COLUMN, churn_rate, load_prepared
from churnlab.files import write_json, write_parquet

train, test, spec = load_prepared(
    Path(paths_raw),
    schema,
    {"seed": prepare_seed, "test_size": prepare_test_size,
     "fill_missing": prepare_fill_missing, "sample_rows": prepare_sample_rows},
)

# %% [markdown]
# The prepared tables always name the id column `customer_id` and the label `churned`
# (1 = the customer left), whatever the source calls them, so that later stages need no
# column names.

# %% keep_output=true
# NBVAL_CHECK_OUTPUT
print(f"id column {spec.id_column!r} -> {ID_COLUMN!r}; "
      f"target {spec.target!r} == {spec.positive_label!r} -> {TARGET_COLUMN!r}")
print(f"columns of the prepared tables: {len(train.columns)}")

# %%
summary = {
    "rows": {"train": len(train), "test": len(test)},
    "churn_rate": {"train": round(churn_rate(train[TARGET_COLUMN]), 6),
                   "test": round(churn_rate(test[TARGET_COLUMN]), 6)},
    "missing_after_cleaning": int(train.isna().sum().sum() + test.isna().sum().sum()),
}
summary

# %% [markdown]
# No customer may be in both splits, and the two churn rates must agree (stratified split).

# %%
overlap = set(train[ID_COLUMN]) & set(test[ID_COLUMN])
assert not overlap, f"{len(overlap)} customers are in both splits"
assert abs(summary["churn_rate"]["train"] - summary["churn_rate"]["test"]) < 0.01

# %%
write_parquet(Path(paths_train), train)
write_parquet(Path(paths_test), test)
write_json(Path(paths_prepare_summary), summary)
