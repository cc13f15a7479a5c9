"""Registry service: owns worker state in the workers KV bucket (the only writer)."""
