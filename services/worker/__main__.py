import sys
from collections.abc import Sequence

from shared.service import run_service

from .handlers import HandlerModuleError, load_modules
from .options import WorkerOptions, parse_args
from .service import WorkerService


def run(options: WorkerOptions) -> None:
    """Run a worker with these options, whichever command line parsed them.

    Handler modules are imported first, before anything connects: a typo in a module name is one line and
    exit code 2 at once, not a traceback after the worker already joined the cluster."""
    try:
        load_modules(options.handler_modules)
    except HandlerModuleError as exc:
        print(f"jetdag worker: {exc}", file=sys.stderr)
        sys.exit(2)
    run_service(WorkerService(options))


def main(argv: Sequence[str] | None = None) -> None:
    run(parse_args(argv))


if __name__ == "__main__":
    main()
