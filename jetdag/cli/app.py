"""The `jetdag` command group and its entry point (exit codes, Ctrl-C, a closed stdout)."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence

import click

from jetdag.cli.api import COMMANDS as API_COMMANDS
from jetdag.cli.stack import COMMANDS as STACK_COMMANDS
from jetdag.cli.workflows import COMMANDS as WORKFLOW_COMMANDS

__all__ = ["cli", "main"]

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""What a shell reports for a process killed by SIGPIPE (`jetdag settings | head`)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="jetdag", prog_name="jetdag")
def cli() -> None:
    """jetdag: distributed DAG execution on NATS JetStream."""


for command in [*STACK_COMMANDS, *WORKFLOW_COMMANDS, *API_COMMANDS]:
    cli.add_command(command)


def _quiet_stdout() -> None:
    """The reader of stdout is gone: point it at /dev/null so the interpreter's final flush cannot fail too."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> None:
    try:
        cli.main(args=list(argv) if argv is not None else None, prog_name="jetdag", standalone_mode=False)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except (click.exceptions.Abort, KeyboardInterrupt):
        raise SystemExit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        _quiet_stdout()
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        _quiet_stdout()
        raise SystemExit(EXIT_BROKEN_PIPE) from None
    # A buffered write that only fails when flushed at exit is a closed pipe too.
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        raise SystemExit(EXIT_BROKEN_PIPE) from None
