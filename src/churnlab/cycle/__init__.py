"""The continuous-training cycle: decide, retrain, promote, record, notify."""
