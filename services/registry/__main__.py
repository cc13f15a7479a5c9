from shared.service import run_service

from .service import RegistryService


def main() -> None:
    run_service(RegistryService())


if __name__ == "__main__":
    main()
