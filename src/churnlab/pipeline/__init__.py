"""The notebook-stage machinery: a ``dvc.yaml`` stage run as a papermill notebook.

``stages`` is the model of ``dvc.yaml`` (imports nothing that executes), ``binding`` gives a
notebook its parameters, ``execute`` runs it with rollback (``guard``) and ``pages`` turns the
executed notebook into a script-free page; ``workspace`` copies the project for tests and the
benchmark.
"""
