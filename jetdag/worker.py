"""The handler API for user code: `from jetdag.worker import JobContext, JobFailed, handler`."""

from services.worker.handlers import JobContext, JobFailed, handler

__all__ = ["JobContext", "JobFailed", "handler"]
