"""The `petvault` command: serve, demo, certs and admin."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from service.config import ConfigError, Settings, production_problems

logger = logging.getLogger(__name__)

# Loggers that would print request URLs (and so presigned URLs) at DEBUG level.
_QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer", "werkzeug", "pymongo", "httpx",
                  "httpcore")


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def load_settings() -> Settings:
    """Read settings from the environment; exit 2 with one line per invalid variable."""
    try:
        return Settings()
    except ValidationError as exc:
        print("petvault: invalid configuration:", file=sys.stderr)
        for error in exc.errors():
            name = "PETVAULT_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"  {name}: {error['msg']}", file=sys.stderr)
        sys.exit(2)


def _serve(args: argparse.Namespace) -> int:
    from service.server import run_forever

    settings = load_settings()
    if args.port is not None:
        settings.port = args.port
    if settings.env == "production":
        problems = production_problems(settings)
        if problems:
            print("petvault: refusing to start in production mode:", file=sys.stderr)
            for problem in problems:
                print(f"  - {problem}", file=sys.stderr)
            return 2
    try:
        run_forever(settings)
    except (ConfigError, OSError) as exc:
        print(f"petvault: {exc}", file=sys.stderr)
        return 2
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(certs_dir=args.certs_dir, port=args.port, keep_serving=args.serve,
                    admin_port=args.admin_port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petvault", description="Secure media backend for connected devices."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service with PETVAULT_* settings")
    serve.add_argument("--port", type=int, default=None,
                       help="device listener port (default: PETVAULT_PORT or 8443)")
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo", help="run the service on embedded stand-ins and simulate two toys"
    )
    demo.add_argument("--port", type=int, default=8443, help="device listener port (default: 8443)")
    demo.add_argument("--admin-port", type=int, default=8444,
                      help="admin listener port (default: 8444)")
    demo.add_argument("--certs-dir", type=Path, default=Path("certs/dev"),
                      help="development PKI directory, created when missing (default: certs/dev)")
    demo.add_argument("--serve", action="store_true",
                      help="keep serving after the scenario until Ctrl-C")
    demo.set_defaults(func=_demo)

    from certs.cli import add_parser as add_certs_parser
    from service.admin_cli import add_parser as add_admin_parser

    add_certs_parser(commands)
    add_admin_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level)
    sys.exit(args.func(args))


if __name__ == "__main__":
    main()
