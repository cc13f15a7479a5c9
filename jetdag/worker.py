"""The handler API for user code: `from jetdag.worker import JobContext, JobFailed, NonRetryable, handler`."""

from services.worker.handlers import JobContext, JobFailed, NonRetryable, handler, on_shutdown, on_startup

__all__ = ["JobContext", "JobFailed", "NonRetryable", "handler", "on_shutdown", "on_startup"]
