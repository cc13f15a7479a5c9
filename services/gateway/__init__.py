"""Gateway: the REST API (Litestar); every call becomes a command on a NATS subject."""
