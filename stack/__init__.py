"""The local stack: its settings, the service harness (PostgreSQL, InfluxDB, TorchServe, bridge), TorchServe access."""
