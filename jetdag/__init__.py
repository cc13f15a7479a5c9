"""jetdag command line: `jetdag up` (the whole stack), `jetdag <service>`, `jetdag settings`."""
