"""What ROC AUC any model can reach under the replay's concept drift: the acceptance's ceiling.

The replay's ``concept_drift`` scenario (params/replay.yaml) makes the customers of one
category leave ``size`` times as often by turning stayers into leavers: at random, or (``by``)
those with the highest values of a numeric column. Turned at random, a turned customer looks
like any other of the category, so no model can rank them: part of the ROC AUC is lost for
every model; turned by a column, a model that learnt the rule knows them. This measures
that part on the test split of the project's run,
with the champion's calibrated scores (``train.calibration``):

- the model as it is (never retrained), and
- the perfectly adapted model: each customer of the category scored s + (1 - s) * p, where p
  is the scenario's turning probability, which is the exact churn probability after the drift
  when s is calibrated (nothing can rank them better),

each averaged over ``--draws`` seeded draws of the turned customers, against the pre-drift
ROC AUC. Prints the figures and writes them into ``bench/RESULTS.md`` between the
concept-ceiling markers::

    .venv/bin/python bench/concept_ceiling.py
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from results import write_section  # bench/ is the script's folder, first on sys.path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from churnlab.data import TARGET_COLUMN
    from churnlab.model import load_model, predict_scores
    from churnlab.monitoring.simulate import highest_stayers

    replay = yaml.safe_load((ROOT / "params" / "replay.yaml").read_text())["replay"]
    drifts = [s for s in replay["simulate"]["scenarios"] if s["kind"] == "concept_drift"]
    if not drifts:
        print("params/replay.yaml: replay.simulate.scenarios: no concept_drift scenario")
        return 1
    model, features = load_model(ROOT / "models" / "model.skops", ROOT / "models" / "features.json")
    test = pd.read_parquet(ROOT / "data" / "prepared" / "test.parquet")
    scores = predict_scores(model, test, features)
    leavers = test[TARGET_COLUMN].to_numpy().astype(bool)
    before = roc_auc_score(leavers, scores)
    rng = np.random.default_rng(args.seed)
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; the project's champion (`models/model.skops`) "
        f"on its {len(test):,} test customers; {args.draws} seeded draws of the turned "
        "customers per row.",
        "",
        "| concept drift (params/replay.yaml) | turned stayers | ROC AUC before | never "
        "retrained | perfectly adapted (the ceiling) | ceiling - before |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    # each drift as the params say, and turned at random (the scenario without ``by``) beside it
    variants = [v for d in drifts for v in ([d, {**d, "by": None}] if d.get("by") else [d])]
    for drift in variants:
        for size in sorted({2.0, float(drift["size"])}):
            inside = (test[drift["column"]].astype(str) == str(drift["category"])).to_numpy()
            rate = leavers[inside].mean()
            turn_p = (min(rate * size, 1.0) - rate) / (1 - rate)
            old, best = [], []
            if drift.get("by"):  # the stayers with the highest values turn: learnable
                turned = highest_stayers(
                    test[drift["by"]].to_numpy(float), inside & ~leavers, turn_p
                )
                after = leavers | turned
                # a model that learnt the rule knows them: they leave for certain
                old.append(roc_auc_score(after, scores))
                best.append(roc_auc_score(after, np.where(turned, 1.0, scores)))
            else:  # at random: nothing tells them apart, the calibrated update is the best
                adapted = np.where(inside, scores + (1 - scores) * turn_p, scores)
                for _ in range(args.draws):
                    after = leavers | (inside & ~leavers & (rng.random(len(test)) < turn_p))
                    old.append(roc_auc_score(after, scores))
                    best.append(roc_auc_score(after, adapted))
            lines.append(
                f"| {drift['column']} = {drift['category']} x{size:g}"
                f"{' by the highest ' + drift['by'] if drift.get('by') else ' at random'}"
                f"{' (the replay)' if drift in drifts and size == float(drift['size']) else ''}"
                f" | {turn_p:.1%} | "
                f"{before:.3f} | {np.mean(old):.3f} | {np.mean(best):.3f} (sd {np.std(best):.3f})"
                f" | {np.mean(best) - before:+.3f} |"
            )
    text = "## The concept drift's ceiling (bench/concept_ceiling.py)\n\n" + "\n".join(lines)
    print(text)
    write_section("concept-ceiling", text, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
