"""``servingctl``: operate the models TorchServe serves (versions, defaults, workers) over its management API.

Every change of a default version, of registered versions or of workers is recorded in PostgreSQL
(``model_changes``, the history ``rollback`` reads) and, best effort, in InfluxDB (``model_changes``).
"""
