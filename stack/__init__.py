"""Start and stop the local stack (PostgreSQL, InfluxDB, TorchServe, bridge)."""
