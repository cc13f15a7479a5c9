"""The `jetdag` command."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: jetdag <command> [args]

commands:
  up                 run the whole stack in the foreground (embedded nats-server unless NATS_URL is set)
  registry           run the registry service
  scheduler          run the scheduler service
  gateway            run the REST gateway
  worker [options]   run a worker (jetdag worker --help)
  settings           print every environment variable with its default (--markdown for the README)
"""


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "up":
        from jetdag.launcher import main as up

        sys.exit(up(rest))
    if command == "registry":
        from services.registry.__main__ import main as registry

        registry()
    elif command == "scheduler":
        from services.scheduler.__main__ import main as scheduler

        scheduler()
    elif command == "gateway":
        from services.gateway.__main__ import main as gateway

        gateway()
    elif command == "worker":
        from services.worker.__main__ import main as worker

        worker(rest)
    elif command == "settings":
        from shared.settings import markdown_table

        print(markdown_table())
    else:
        print(f"jetdag: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
