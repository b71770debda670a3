"""The small data description of the package's table tests (data checks, monitoring)."""

SCHEMA = {
    "id_column": "cust",
    "target": "left",
    "positive_label": "yes",
    "negative_label": "no",
    "numeric": {"months": {"min": 0, "max": 100}, "spend": {"min": 0, "nullable": True}},
    "categorical": {"plan": ["basic", "pro"], "region": None},
}
