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

# %%
from churnlab.notebook import stage_params

# defaults from params/; in JupyterLab this also moves to the project root
param = stage_params("prepare")

# %% tags=["parameters"]
paths_raw: str = param("paths.raw")  # raw customer table, written by the fetch stage
paths_train: str = param("paths.train")  # output: training split
paths_test: str = param("paths.test")  # output: test split
paths_cycle_training: str = param("paths.cycle_training")  # labelled months for training (cycle)
paths_prepare_summary: str = param("paths.prepare_summary")  # output: rows and churn rates
schema: dict = param("schema")  # the data description (params/data.yaml)
prepare_seed: int = param("prepare.seed")  # split seed
prepare_test_size: float = param("prepare.test_size")  # share of customers held out for testing
prepare_fill_missing: dict = param("prepare.fill_missing")  # values for blank numeric cells
prepare_sample_rows = param("prepare.sample_rows")  # int: keep this many rows; None: all

# %%
from pathlib import Path

from churnlab.data import ID_COLUMN, TARGET_COLUMN, churn_rate
from churnlab.files import write_json, write_parquet
from churnlab.split import add_cycle_months, check_split, load_prepared

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
check_split(train, test)

# %% [markdown]
# The labelled months of the continuous-training cycle (docs/cycle.md), when there are any,
# join the training split after the check: the split and the test customers stay the raw
# data's own.

# %%
train, cycle_rows = add_cycle_months(
    train, test, Path(paths_cycle_training), spec, prepare_fill_missing
)
if cycle_rows:
    summary["rows"]["cycle_months"] = cycle_rows

# %%
write_parquet(Path(paths_train), train)
write_parquet(Path(paths_test), test)
write_json(Path(paths_prepare_summary), summary)
