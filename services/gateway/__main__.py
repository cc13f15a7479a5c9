from shared.service import run_service

from .service import GatewayService


def main() -> None:
    run_service(GatewayService())


if __name__ == "__main__":
    main()
