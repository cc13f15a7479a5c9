"""The `jetdag` command: run the stack and its services, and drive a running gateway from a terminal."""

from jetdag.cli.app import cli, main

__all__ = ["cli", "main"]
