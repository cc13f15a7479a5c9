"""Scheduler service: owns executions, the job stream and its consumers."""
