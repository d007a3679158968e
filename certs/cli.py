"""The ``petvault certs`` command: create the development PKI, issue and inspect.

`add_parser` attaches the command to the main ``petvault`` parser. Each
subcommand stores its handler as ``func``, which takes the parsed arguments and
returns the exit code. Expected failures (an invalid device id, an existing
file, a rejected CSR, a missing CA) print one ``error:`` line on stderr and
return `EXIT_FAILURE`. ``inspect`` has its own exit codes, listed in its help.

For local use without the service package: ``python -m certs.cli certs init``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from certs.authority import CertificateAuthorityError, load_certificate_authority
from certs.clock import utc_now
from certs.csr import CsrRejectedError, sign_device_csr
from certs.files import (
    OutputFileExistsError,
    check_not_exists,
    make_private_directory,
    write_certificate,
)
from certs.inspect import DEFAULT_WARN_DAYS, inspect_files
from certs.leaf import DEFAULT_LEAF_VALIDITY_DAYS, ValidityError
from certs.naming import DEVICE_ID_RULE, InvalidNameError, validate_device_id
from certs.pki import (
    PkiLayout,
    init_dev_pki,
    issue_device_certificate,
    issue_operator_certificate,
)

DEFAULT_PKI_DIRECTORY = Path("certs/dev")

EXIT_SUCCESS = 0
EXIT_FAILURE = 1

_Handler = Callable[[argparse.Namespace], int]

_EXPECTED_ERRORS = (
    InvalidNameError,
    CertificateAuthorityError,
    CsrRejectedError,
    ValidityError,
    OSError,
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` command and its subcommands to ``subparsers``."""
    certs_parser = subparsers.add_parser(
        "certs",
        help="manage the PKI: CAs and device, operator and server certificates",
        description="Create the development PKI, issue certificates and inspect them.",
    )
    commands = certs_parser.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)

    _add_init(commands)
    _add_issue_device(commands)
    _add_issue_operator(commands)
    _add_sign_csr(commands)
    _add_inspect(commands)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` as ``petvault`` arguments and run the chosen command.

    Tests and ``python -m certs.cli`` use this. The installed ``petvault``
    command has its own parser in the service package, which calls `add_parser`.
    """
    parser = argparse.ArgumentParser(prog="petvault")
    add_parser(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    handler: _Handler = args.func
    return handler(args)


def _add_init(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "init",
        help="create a development PKI",
        description=(
            "Create a device CA, an operator CA, a server CA and a server certificate "
            "for localhost, 127.0.0.1 and ::1. Every CA is marked as a development CA "
            "(O=petvault development PKI), which production mode rejects."
        ),
    )
    _add_directory_option(parser)
    _add_force_option(parser)
    parser.set_defaults(func=_run_init)


def _add_issue_device(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "issue-device",
        help="generate a device key and certificate (development)",
        description=(
            "Generate a key pair for a device and issue its client certificate from the "
            "device CA. Writes DIR/devices/DEVICE_ID.pem and .key. In production, devices "
            "generate their own keys: use sign-csr."
        ),
    )
    parser.add_argument("device_id", metavar="DEVICE_ID", help=f"device id: {DEVICE_ID_RULE}")
    _add_directory_option(parser)
    _add_force_option(parser)
    _add_days_option(parser)
    parser.set_defaults(func=_run_issue_device)


def _add_issue_operator(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "issue-operator",
        help="generate an operator key and certificate",
        description=(
            "Generate a key pair for an operator and issue its client certificate from "
            "the operator CA. Writes DIR/operators/NAME.pem and .key."
        ),
    )
    parser.add_argument("name", metavar="NAME", help=f"operator name: {DEVICE_ID_RULE}")
    _add_directory_option(parser)
    _add_force_option(parser)
    _add_days_option(parser)
    parser.set_defaults(func=_run_issue_operator)


def _add_sign_csr(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "sign-csr",
        help="issue a device certificate for a device-generated CSR",
        description=(
            "Verify a PEM certificate signing request from a device and issue a device "
            "certificate for its public key with the device CA. Only the public key is "
            "taken from the CSR: subject and extensions come from --device-id and the "
            "device profile. Accepted keys: ECDSA P-256/P-384 and RSA >= 2048."
        ),
    )
    parser.add_argument("csr", metavar="CSR", type=Path, help="PEM CSR file")
    parser.add_argument(
        "--device-id", required=True, help=f"device id to certify: {DEVICE_ID_RULE}"
    )
    _add_directory_option(parser)
    parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="certificate output file (default: DIR/devices/DEVICE_ID.pem)",
    )
    _add_force_option(parser)
    _add_days_option(parser)
    parser.set_defaults(func=_run_sign_csr)


def _add_inspect(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "inspect",
        help="list certificates and flag expired or expiring ones",
        description=(
            "List every certificate in each PEM file or bundle with its subject, issuer, "
            "serial and validity period (UTC), flagged EXPIRED, NOT YET VALID or "
            "EXPIRES IN N DAYS."
        ),
        epilog=(
            "exit status: 0 if all certificates are valid now, 1 if any is expired or "
            "not yet valid, 2 if a file is missing, unreadable or not PEM"
        ),
    )
    parser.add_argument("files", metavar="FILE", type=Path, nargs="+", help="PEM file or bundle")
    parser.add_argument(
        "--warn-days",
        type=_non_negative_int,
        default=DEFAULT_WARN_DAYS,
        metavar="N",
        help=(
            "flag certificates that expire within N days, 0 to turn off "
            f"(default: {DEFAULT_WARN_DAYS})"
        ),
    )
    parser.set_defaults(func=_run_inspect)


def _add_directory_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_PKI_DIRECTORY,
        metavar="DIR",
        help=f"PKI directory (default: {DEFAULT_PKI_DIRECTORY})",
    )


def _add_force_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _add_days_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--days",
        type=_positive_int,
        default=DEFAULT_LEAF_VALIDITY_DAYS,
        metavar="N",
        help=f"certificate validity in days (default: {DEFAULT_LEAF_VALIDITY_DAYS})",
    )


def _reporting_errors(handler: _Handler) -> _Handler:
    """Turn the expected errors of ``handler`` into one stderr line and `EXIT_FAILURE`."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except OutputFileExistsError as error:
            _print_error(f"{error}; use --force to overwrite it")
        except _EXPECTED_ERRORS as error:
            _print_error(_describe(error))
        return EXIT_FAILURE

    return run


@_reporting_errors
def _run_init(args: argparse.Namespace) -> int:
    layout = init_dev_pki(args.dir, force=args.force)

    for path in layout.dev_pki_files():
        print(f"wrote {path}")
    print(f"devices trust {layout.server_ca_cert}; the server trusts the device and operator CAs")
    return EXIT_SUCCESS


@_reporting_errors
def _run_issue_device(args: argparse.Namespace) -> int:
    cert_path, key_path = issue_device_certificate(
        args.dir, args.device_id, force=args.force, validity_days=args.days
    )
    print(f"wrote {cert_path}")
    print(f"wrote {key_path}")
    return EXIT_SUCCESS


@_reporting_errors
def _run_issue_operator(args: argparse.Namespace) -> int:
    cert_path, key_path = issue_operator_certificate(
        args.dir, args.name, force=args.force, validity_days=args.days
    )
    print(f"wrote {cert_path}")
    print(f"wrote {key_path}")
    return EXIT_SUCCESS


@_reporting_errors
def _run_sign_csr(args: argparse.Namespace) -> int:
    device_id = validate_device_id(args.device_id)
    layout = PkiLayout(args.dir)
    out: Path = args.out if args.out is not None else layout.device_cert(device_id)

    csr_pem = args.csr.read_bytes()
    ca = load_certificate_authority(layout.device_ca_cert, layout.device_ca_key)
    if not args.force:
        check_not_exists([out])

    try:
        certificate = sign_device_csr(csr_pem, device_id, ca, validity_days=args.days)
    except CsrRejectedError as error:
        _print_error(f"CSR {args.csr} rejected: {error}")
        return EXIT_FAILURE

    if args.out is None:
        make_private_directory(out.parent)
    write_certificate(out, certificate, force=args.force)
    print(f"wrote {out}")
    return EXIT_SUCCESS


def _run_inspect(args: argparse.Namespace) -> int:
    return inspect_files(args.files, now=utc_now(), warn_days=args.warn_days)


# argparse words a ValueError from a type function as "invalid <function name> value",
# so these raise ArgumentTypeError with the rule instead.


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number, 0 or more, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more, got {text!r}")
    return value


def _describe(error: Exception) -> str:
    # An OSError from the file system reads best as "<file>: <reason>".
    # Its default text starts with an errno tag such as "[Errno 13]".
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error)


def _print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
