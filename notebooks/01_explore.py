# ---
# jupyter:
#   kernelspec:
#     display_name: churnlab (Python 3.11)
#     language: python
#     name: churnlab
# ---

# %% [markdown]
# # 01 · Explore: who churns?
#
# A first look at the customers, **on the training split only**, so that nothing we learn
# here leaks from the customers we will test the model on. The split is the same one the
# prepare stage writes: same function, same seed.

# %%
from churnlab.notebook import stage_params

# defaults from params/; in JupyterLab this also moves to the project root
param = stage_params("explore")

# %% tags=["parameters"]
paths_raw: str = param("paths.raw")  # raw customer table, written by the fetch stage
schema: dict = param("schema")  # the data description (params/data.yaml)
prepare_seed: int = param("prepare.seed")  # split seed (the prepare stage's)
prepare_test_size: float = param("prepare.test_size")  # share of customers held out for testing
prepare_sample_rows = param("prepare.sample_rows")  # int: keep this many rows; None: all
explore_segments: list = param("explore.segments")  # categorical columns to break churn down by
explore_bands: int = param("explore.bands")  # quantile bands for numeric columns

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from churnlab.data import TARGET_COLUMN, churn_rate
from churnlab.explore import associations, churn_by, missing_values
from churnlab.split import load_prepared

pd.set_option("display.precision", 4)
train, _, spec = load_prepared(
    Path(paths_raw),
    schema,
    {"seed": prepare_seed, "test_size": prepare_test_size,
     "fill_missing": {}, "sample_rows": prepare_sample_rows},
)
numeric, categorical = list(spec.numeric), list(spec.categorical)

# %% [markdown]
# ## The table
# Columns as described in `params/data.yaml`; every value passed the schema checks.

# %% keep_output=true
# NBVAL_CHECK_OUTPUT
print(f"numeric features: {len(numeric)}, categorical features: {len(categorical)}")
print(f"target: {spec.target!r} (churn = {spec.positive_label!r})")

# %%
print(f"training customers: {len(train):,}; churn rate {churn_rate(train[TARGET_COLUMN]):.1%}")
train.head()

# %% [markdown]
# ## Missing values
# Blank cells, before any filling. Blanks in a nullable numeric column are filled in the
# prepare stage (`prepare.fill_missing`) or imputed inside the model.

# %%
missing = missing_values(train)
missing if len(missing) else "no missing values"

# %% [markdown]
# ## Churn by segment

# %%
segment_tables = {name: churn_by(train, name) for name in explore_segments}
for table in segment_tables.values():
    display(table)

# %%
if segment_tables:  # a table may have no categorical columns (explore.segments: [])
    fig, axes = plt.subplots(1, len(segment_tables), figsize=(4.5 * len(segment_tables), 3.6),
                             squeeze=False)
    overall = churn_rate(train[TARGET_COLUMN])
    for ax, (name, table) in zip(axes[0], segment_tables.items(), strict=True):
        ax.bar([str(v) for v in table.index], table["churn_rate"], color="#4c72b0")
        ax.axhline(overall, color="#c44e52", linestyle="--", label="overall")
        ax.set_title(f"churn rate by {name}")
        ax.tick_params(axis="x", labelrotation=30)
    axes[0][0].legend()
    fig.tight_layout()
    plt.show()
else:
    print("no segments to break churn down by (explore.segments is empty)")

# %% [markdown]
# ## Numeric features: bands and distributions

# %%
for name in numeric:
    display(churn_by(train, name, bands=explore_bands))

# %%
if numeric:  # a table may have no numeric columns
    fig, axes = plt.subplots(1, len(numeric), figsize=(4.5 * len(numeric), 3.4), squeeze=False)
    for ax, name in zip(axes[0], numeric, strict=True):
        for label, color in ((0, "#4c72b0"), (1, "#c44e52")):
            values = train.loc[train[TARGET_COLUMN] == label, name].dropna()
            ax.hist(values, bins=30, alpha=0.6, density=True, color=color,
                    label="churned" if label else "stayed")
        ax.set_title(name)
    axes[0][0].legend()
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## Which features go with churn?
# Cramér's V for categorical features, rank-biserial correlation for numeric ones
# (positive: churners have higher values).

# %%
strength = associations(train, numeric, categorical)
strength

# %%
fig, ax = plt.subplots(figsize=(7, 0.3 * len(strength) + 1))
ax.barh(strength["feature"][::-1], strength["strength"].abs()[::-1], color="#55a868")
ax.set_xlabel("strength of association with churn (absolute)")
fig.tight_layout()
plt.show()
