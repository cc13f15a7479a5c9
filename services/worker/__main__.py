from collections.abc import Sequence

from shared.service import run_service

from .options import parse_args
from .service import WorkerService


def main(argv: Sequence[str] | None = None) -> None:
    run_service(WorkerService(parse_args(argv)))


if __name__ == "__main__":
    main()
