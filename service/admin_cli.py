"""The `petvault admin` command: the admin API for people who would rather not use curl.

Every subcommand calls the admin listener with an operator certificate. Without
`--cert` and `--key`, the certificate is `DIR/operators/NAME.pem` for `--operator
NAME`, or the only one in `DIR/operators/` when there is exactly one.

Exit status: 0 on success, 1 when the API rejects the request (the HTTP status and
error code are printed), 2 when the request cannot be made (files, connection).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from certs.naming import InvalidNameError, validate_operator_name
from service.admin_client import (
    DEFAULT_ADMIN_URL,
    AdminApiError,
    AdminClient,
    AdminClientError,
    printable,
)
from service.crl import REVOCATION_REASONS
from service.limits import ROUTE_CLASSES
from service.storage.mongo import ACTIVE, REVOKED, SUSPENDED

EXIT_SUCCESS = 0
EXIT_REJECTED = 1
EXIT_FAILED = 2

DEFAULT_PKI_DIRECTORY = Path("certs/dev")
DEVICE_STATUSES = (ACTIVE, SUSPENDED, REVOKED)

_Command = Callable[[AdminClient, argparse.Namespace], int]


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `admin` command and its subcommands to the `petvault` parser."""
    parser = subparsers.add_parser(
        "admin",
        help="call the admin API with an operator certificate",
        description="Enroll, list, revoke, suspend and reactivate devices, set their "
        "rate-limit overrides, fetch the CRL and read the audit log through the admin "
        "listener.",
        epilog="exit status: 0 on success, 1 when the API rejects the request, "
        "2 when the request cannot be made",
    )
    parser.add_argument("--server", default=DEFAULT_ADMIN_URL,
                        help=f"admin listener URL (default: {DEFAULT_ADMIN_URL})")
    parser.add_argument("--dir", type=Path, default=DEFAULT_PKI_DIRECTORY, metavar="DIR",
                        help=f"PKI directory (default: {DEFAULT_PKI_DIRECTORY})")
    parser.add_argument("--operator", metavar="NAME",
                        help="use DIR/operators/NAME.pem and NAME.key")
    parser.add_argument("--cert", type=Path, metavar="FILE", help="operator certificate (PEM)")
    parser.add_argument("--key", type=Path, metavar="FILE", help="operator private key (PEM)")
    parser.add_argument("--ca", type=Path, metavar="FILE",
                        help="CA that signed the server certificate (default: DIR/server-ca.pem)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON response")
    commands = parser.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)

    devices = commands.add_parser("devices", help="list devices, or show one with its certificates")
    devices.add_argument("device_id", nargs="?", metavar="DEVICE_ID", help="show only this device")
    devices.add_argument("--status", choices=DEVICE_STATUSES, help="only devices with this status")
    devices.add_argument("--household-id", metavar="ID", help="only devices of this household")
    devices.set_defaults(admin_func=_run_devices)

    enroll = commands.add_parser("enroll", help="enroll a device from a CSR or a certificate")
    enroll.add_argument("device_id", metavar="DEVICE_ID")
    enroll.add_argument("--household-id", required=True, metavar="ID")
    source = enroll.add_mutually_exclusive_group(required=True)
    source.add_argument("--csr", type=Path, metavar="FILE", help="PEM CSR made on the device")
    source.add_argument("--certificate", type=Path, metavar="FILE",
                        help="PEM device certificate issued elsewhere by the device CA")
    enroll.add_argument("--out", type=Path, metavar="FILE",
                        help="write the signed certificate here (default: print it)")
    enroll.set_defaults(admin_func=_run_enroll)

    revoke = commands.add_parser("revoke", help="revoke a device and all its certificates")
    revoke.add_argument("device_id", metavar="DEVICE_ID")
    _add_reason(revoke)
    revoke.set_defaults(admin_func=_run_revoke)

    revoke_certificate = commands.add_parser("revoke-certificate",
                                             help="revoke one certificate by serial (hex)")
    revoke_certificate.add_argument("serial", metavar="SERIAL")
    _add_reason(revoke_certificate)
    revoke_certificate.set_defaults(admin_func=_run_revoke_certificate)

    suspend = commands.add_parser("suspend", help="block a device until it is reactivated")
    suspend.add_argument("device_id", metavar="DEVICE_ID")
    suspend.set_defaults(admin_func=_run_suspend)

    reactivate = commands.add_parser("reactivate", help="lift a device's suspension")
    reactivate.add_argument("device_id", metavar="DEVICE_ID")
    reactivate.set_defaults(admin_func=_run_reactivate)

    rate_limits = commands.add_parser(
        "rate-limits",
        help="show, set or clear a device's rate-limit override",
        description="Without options, show the device's override. Limits use the notation "
        "of PETVAULT_RATE_LIMITS, e.g. '600/minute;2000/hour'. Setting replaces the whole "
        "override, and a route class left out keeps the configured limits.",
    )
    rate_limits.add_argument("device_id", metavar="DEVICE_ID")
    rate_limits.add_argument("--default", metavar="LIMITS",
                             help="limits for requests outside the upload and download classes")
    rate_limits.add_argument("--upload", metavar="LIMITS",
                             help="limits for uploads (POST /v1/recordings)")
    rate_limits.add_argument("--download", metavar="LIMITS",
                             help="limits for downloads (GET /v1/recordings/{id})")
    rate_limits.add_argument("--clear", action="store_true",
                             help="remove the override, so the configured limits apply again")
    rate_limits.set_defaults(admin_func=_run_rate_limits)

    crl = commands.add_parser("crl", help="fetch the CRL and list its revoked serials")
    crl.add_argument("--out", type=Path, metavar="FILE", help="also write the CRL to FILE")
    crl.add_argument("--pem", action="store_true", help="write PEM instead of DER")
    crl.set_defaults(admin_func=_run_crl)

    audit = commands.add_parser("audit", help="print audit entries, oldest first")
    audit.add_argument("--since", metavar="TIME", help="ISO 8601 time, e.g. 2026-05-01T12:00:00Z")
    audit.add_argument("--limit", type=_positive_int, default=100, metavar="N",
                       help="print at most N entries (default: 100)")
    audit.set_defaults(admin_func=_run_audit)

    parser.set_defaults(func=run)


def _positive_int(text: str) -> int:
    """Parse a count of 1 or more for argparse, with a message that states the rule."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number, 1 or more, got {text!r}")
    return value


def _add_reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", required=True, choices=list(REVOCATION_REASONS),
                        help="RFC 5280 revocation reason")


def run(args: argparse.Namespace) -> int:
    """Run one `petvault admin` subcommand; return its exit status."""
    command: _Command = args.admin_func
    try:
        cert_path, key_path = _operator_credentials(args)
        ca_path = args.ca or args.dir / "server-ca.pem"
        with AdminClient(args.server, cert_path, key_path, ca_path) as client:
            return command(client, args)
    except AdminApiError as exc:
        _print_error(f"{exc}")
        return EXIT_REJECTED
    except (AdminClientError, OSError, ValueError) as exc:
        _print_error(str(exc))
        return EXIT_FAILED


def _operator_credentials(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.cert is not None or args.key is not None:
        if args.cert is None or args.key is None:
            raise AdminClientError("give both --cert and --key")
        return args.cert, args.key

    operators = args.dir / "operators"
    if args.operator is not None:
        try:
            name = validate_operator_name(args.operator)
        except InvalidNameError as exc:
            raise AdminClientError(str(exc)) from None
        cert_path = operators / f"{name}.pem"
        if not cert_path.exists():
            raise AdminClientError(
                f"no certificate for operator {name}: {cert_path} not found; create it with "
                f"`petvault certs issue-operator {name} --dir {args.dir}`, or pass --cert and --key"
            )
        return cert_path, operators / f"{name}.key"

    candidates = sorted(operators.glob("*.pem")) if operators.is_dir() else []
    if len(candidates) != 1:
        found = f"{len(candidates)} certificates" if candidates else "no certificate"
        raise AdminClientError(
            f"{found} in {operators}; pass --operator NAME, or --cert and --key "
            "(create one with `petvault certs issue-operator NAME`)"
        )
    return candidates[0], candidates[0].with_suffix(".key")


# Subcommands


def _run_devices(client: AdminClient, args: argparse.Namespace) -> int:
    if args.device_id is not None:
        device = client.get_device(args.device_id)
        if args.json:
            return _print_json(device)
        _print_device(device)
        return EXIT_SUCCESS

    devices: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = client.list_devices(status=args.status, household_id=args.household_id,
                                   cursor=cursor)
        devices.extend(page["devices"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if args.json:
        return _print_json({"devices": devices})
    print(f"{'DEVICE':<24} {'HOUSEHOLD':<20} {'STATUS':<10} CERTIFICATES (active/all)")
    for device in devices:
        certificates = device["certificates"]
        active = sum(1 for item in certificates if item["status"] == "active")
        print(f"{printable(device['device_id']):<24} {printable(device['household_id']):<20} "
              f"{device['status']:<10} {active}/{len(certificates)}")
    return EXIT_SUCCESS


def _run_enroll(client: AdminClient, args: argparse.Namespace) -> int:
    if args.csr is not None:
        answer = client.enroll(args.device_id, args.household_id, csr_pem=args.csr.read_text())
    else:
        answer = client.enroll(args.device_id, args.household_id,
                               cert_pem=args.certificate.read_text())
    if args.json:
        return _print_json(answer)
    if args.out is not None:
        args.out.write_text(answer["certificate_pem"])
        print(f"wrote {args.out}")
    else:
        print(answer["certificate_pem"], end="")
    _print_device(answer["device"])
    return EXIT_SUCCESS


def _run_revoke(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.revoke_device(args.device_id, args.reason)
    return _print_revocation(answer, args, target=f"device {printable(args.device_id)}")


def _run_revoke_certificate(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.revoke_certificate(args.serial, args.reason)
    return _print_revocation(answer, args, target=f"certificate {printable(args.serial)}")


def _print_revocation(answer: dict[str, Any], args: argparse.Namespace, *, target: str) -> int:
    if args.json:
        return _print_json(answer)
    when, reason = answer["revoked_at"], answer["revocation_reason"]
    if answer["already_revoked"]:
        print(f"{target} was already revoked at {when} ({reason}); nothing changed")
    else:
        print(f"revoked {target} at {when} ({reason})")
    serials = [item["serial"] for item in answer["device"]["certificates"]
               if item["status"] == "revoked"]
    print(f"device {printable(answer['device']['device_id'])} is {answer['device']['status']}; "
          f"revoked serials: {', '.join(serials) or 'none'}")
    if answer.get("crl_number") is not None:
        print(f"CRL {answer['crl_number']} signed")
    return EXIT_SUCCESS


def _run_suspend(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.suspend(args.device_id)
    return _print_status_change(answer, args, verb="suspended")


def _run_reactivate(client: AdminClient, args: argparse.Namespace) -> int:
    answer = client.reactivate(args.device_id)
    return _print_status_change(answer, args, verb="reactivated")


def _print_status_change(answer: dict[str, Any], args: argparse.Namespace, *, verb: str) -> int:
    if args.json:
        return _print_json(answer)
    device_id = printable(answer["device"]["device_id"])
    if answer["changed"]:
        print(f"{verb} {device_id}")
    else:
        print(f"{device_id} is already {answer['device']['status']}; nothing changed")
    return EXIT_SUCCESS


def _run_rate_limits(client: AdminClient, args: argparse.Namespace) -> int:
    limits: dict[str, str] = {route_class: getattr(args, route_class)
                              for route_class in ROUTE_CLASSES
                              if getattr(args, route_class) is not None}
    if args.clear and limits:
        raise ValueError("--clear removes the whole override; give it without "
                         "--default, --upload or --download")
    if args.clear:
        answer = client.clear_rate_limits(args.device_id)
    elif limits:
        answer = client.set_rate_limits(args.device_id, limits)
    else:
        device = client.get_device(args.device_id)
        if args.json:
            return _print_json(device)
        _print_rate_limit_override(device)
        return EXIT_SUCCESS

    if args.json:
        return _print_json(answer)
    device = answer["device"]
    if not answer["changed"]:
        print(f"{printable(device['device_id'])} already has this override; nothing changed")
    _print_rate_limit_override(device)
    effective = answer.get("effective_rate_limits")
    if effective is None:
        print("rate limits are disabled on the server (PETVAULT_RATE_LIMIT_ENABLED=false)")
        return EXIT_SUCCESS
    print("limits in force:")
    for route_class in ROUTE_CLASSES:
        value = effective.get(route_class)
        print(f"  {route_class:<9} {printable(value) if value else 'counts against default'}")
    return EXIT_SUCCESS


def _print_rate_limit_override(device: dict[str, Any]) -> None:
    device_id = printable(device["device_id"])
    override = device.get("rate_limit_override")
    if not override:
        print(f"{device_id} has no rate-limit override; the configured limits apply")
        return
    print(f"rate-limit override of {device_id}:")
    for route_class in ROUTE_CLASSES:
        value = override.get(route_class)
        print(f"  {route_class:<9} {printable(value) if value else 'not overridden'}")


def _run_crl(client: AdminClient, args: argparse.Namespace) -> int:
    der = client.crl()
    if args.out is not None:
        args.out.write_bytes(client.crl(pem=True) if args.pem else der)
        print(f"wrote {args.out}")
    crl = x509.load_der_x509_crl(der)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    next_update = crl.next_update_utc.isoformat() if crl.next_update_utc else "none"
    print(f"CRL {number} issued by {crl.issuer.rfc4514_string()}")
    print(f"thisUpdate {crl.last_update_utc.isoformat()}  nextUpdate {next_update}")
    print(f"{len(crl)} revoked serial(s)")
    for entry in crl:
        reason = "unspecified"
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.value
        except x509.ExtensionNotFound:
            pass
        print(f"  {entry.serial_number:x}  {entry.revocation_date_utc.isoformat()}  {reason}")
    return EXIT_SUCCESS


def _run_audit(client: AdminClient, args: argparse.Namespace) -> int:
    entries: list[dict[str, Any]] = []
    cursor: str | None = None
    while len(entries) < args.limit:
        page = client.audit(since=args.since, limit=min(500, args.limit - len(entries)),
                            cursor=cursor)
        entries.extend(page["entries"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    if args.json:
        return _print_json({"entries": entries})
    for entry in entries:
        print(" ".join([
            entry["time"],
            _describe_actor(entry["actor"]),
            printable(entry["action"]),
            printable(entry["target"] or "-"),
            entry["result"],
            printable(entry["source_ip"] or "-"),
        ]))
    return EXIT_SUCCESS


def _describe_actor(actor: dict[str, Any]) -> str:
    kind = actor.get("type")
    if kind == "operator":
        return f"operator:{printable(str(actor.get('name')))}"
    if kind == "device":
        return f"device:{printable(str(actor.get('device_id')))}"
    if kind == "certificate":
        return f"certificate:{printable(str(actor.get('fingerprint')))[:16]}.."
    return printable(str(kind))


def _print_device(device: dict[str, Any]) -> None:
    print(f"device {printable(device['device_id'])}  household {printable(device['household_id'])}"
          f"  status {device['status']}")
    if device.get("revoked_at"):
        print(f"  revoked at {device['revoked_at']} ({device['revocation_reason']})")
    for item in device["certificates"]:
        line = (f"  certificate {item['serial']}  {item['status']}  not after {item['not_after']}"
                f"  SHA-256 {item['fingerprint']}")
        if item.get("revoked_at"):
            line += f"  revoked {item['revoked_at']} ({item['revocation_reason']})"
        print(line)


def _print_json(value: Any) -> int:
    print(json.dumps(value, indent=2))
    return EXIT_SUCCESS


def _print_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
