"""MLflow tracking of pipeline runs, the model registry and the team server.

``settings``: ``params/tracking.yaml`` and how to reach the store. ``processes``: which
pipeline run a stage belongs to, and whether a run's process still lives. ``lineage``: what
a run records about its code, data and params, in keys MLflow accepts. ``runs``: one MLflow
run per stage under one run per pipeline run. ``promotion``: the rules that decide whether a
challenger becomes champion. ``registry``: logging, registering and comparing models, and
loading the champion. ``server``: the team MLflow server on PostgreSQL.
"""
