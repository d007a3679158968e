"""The `petvault` command: serve, demo, certs and admin."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import SettingsError

from service.config import (
    ConfigError,
    Settings,
    mongodb_hosts,
    production_problems,
    unreadable_tls_files,
)

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
            print(f"  {_describe_settings_error(error)}", file=sys.stderr)
        sys.exit(2)
    except SettingsError as exc:
        # pydantic-settings raises this when it cannot decode a value before validation.
        # Its message names the field and the source, never the value.
        print(f"petvault: invalid configuration: {exc}", file=sys.stderr)
        sys.exit(2)


def _describe_settings_error(error: ErrorDetails) -> str:
    # The first loc element is the field, so the variable is PETVAULT_<FIELD>. Any
    # further elements locate the error inside a JSON value, such as a device id in
    # PETVAULT_RATE_LIMIT_OVERRIDES.
    field, *inside = error["loc"]
    name = f"PETVAULT_{str(field).upper()}"
    if inside:
        position = ".".join(str(part) for part in inside)
        printable = "".join(ch if ch.isprintable() else "?" for ch in position)[:80]
        name += f" (at {printable})"
    message = str(error["msg"])
    if error.get("type") == "value_error":
        # pydantic prefixes the message of a ValueError raised in a validator.
        message = message.removeprefix("Value error, ")
    if message.startswith(f"{name} "):
        return message  # the validator's message already names the variable
    return f"{name}: {message}"


def _serve(args: argparse.Namespace) -> int:
    from service.server import run_forever
    from service.storage.mongo import StoreUnavailableError

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
    unreadable = unreadable_tls_files(settings)
    if unreadable:
        print("petvault: cannot start the TLS listeners:", file=sys.stderr)
        for problem in unreadable:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    try:
        run_forever(settings)
    except (ConfigError, OSError) as exc:
        print(f"petvault: {exc}", file=sys.stderr)
        return 2
    except StoreUnavailableError as exc:
        # The hosts are printed, never the URI: it can contain a password.
        where = "" if settings.uses_embedded_mongodb else (
            " at " + ", ".join(mongodb_hosts(settings.mongodb_uri)))
        print(f"petvault: MongoDB{where} is unavailable at startup ({exc}); check "
              "PETVAULT_MONGODB_URI, its credentials and that the server is running",
              file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from service.demo import run_demo

    return run_demo(certs_dir=args.certs_dir, port=args.port, keep_serving=args.serve,
                    admin_port=args.admin_port)


def _port_number(text: str) -> int:
    """Parse a TCP port for argparse. Port 0 lets the system choose a free port."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {text!r}")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="petvault", description="Secure media backend for connected devices."
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default: INFO)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the service with PETVAULT_* settings",
        epilog="exit status: 0 after SIGINT or SIGTERM, 1 when MongoDB is unavailable at "
        "startup, 2 for an invalid configuration",
    )
    serve.add_argument("--port", type=_port_number, default=None,
                       help="device listener port (default: PETVAULT_PORT or 8443)")
    serve.set_defaults(func=_serve)

    demo = commands.add_parser(
        "demo", help="run the service on embedded stand-ins and simulate two toys"
    )
    demo.add_argument("--port", type=_port_number, default=8443,
                      help="device listener port (default: 8443)")
    demo.add_argument("--admin-port", type=_port_number, default=8444,
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
