"""churnlab: notebook-first, reproducible churn modelling."""

__version__ = "0.1.0"
