from shared.service import run_service

from .service import SchedulerService


def main() -> None:
    run_service(SchedulerService())


if __name__ == "__main__":
    main()
