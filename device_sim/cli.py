"""`petvault-sim`: act as one connected toy against a petvault server.

Every failure prints one line on stderr and exits with status 1. Usage errors exit
with status 2 (argparse's convention). A traceback appears only with --verbose, and
only for unexpected errors.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from device_sim.audio import MAX_SECONDS, synthesize_wav
from device_sim.client import DEFAULT_SERVER_URL, DEFAULT_TIMEOUT, DeviceClient
from device_sim.errors import SimulatorError
from device_sim.keygen import generate_device_key_and_csr, validate_device_id
from device_sim.responses import RecordingMetadata
from device_sim.scenario import run_scenario

logger = logging.getLogger(__name__)

PROGRAM = "petvault-sim"
DEFAULT_CERTS_DIR = "certs/dev"
DEFAULT_DEVICE_ID = "toy-1"

# Environment variables that set the default of each global option.
ENV_SERVER = "PETVAULT_SIM_SERVER"
ENV_CERTS_DIR = "PETVAULT_SIM_CERTS_DIR"
ENV_DEVICE = "PETVAULT_SIM_DEVICE"
ENV_CERT = "PETVAULT_SIM_CERT"
ENV_KEY = "PETVAULT_SIM_KEY"
ENV_CA = "PETVAULT_SIM_CA"

Handler = Callable[[argparse.Namespace], int]


# --- argument types ------------------------------------------------------------------


def _device_id(value: str) -> str:
    try:
        return validate_device_id(value)
    except SimulatorError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {value!r}") from None
    if not 0 < seconds <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"seconds must be more than 0 and at most {MAX_SECONDS:g} (got {value})"
        )
    return seconds


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 (got {value})")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return number


# --- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser for all commands."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description=(
            "Simulate a petvault device: call the API over mutual TLS with the device "
            "certificate, and move audio through S3 presigned URLs."
        ),
        epilog=(
            f"Each global option also reads an environment variable: {ENV_SERVER}, "
            f"{ENV_CERTS_DIR}, {ENV_DEVICE}, {ENV_CERT}, {ENV_KEY}, {ENV_CA}."
        ),
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        default=os.environ.get(ENV_SERVER, DEFAULT_SERVER_URL),
        help="petvault API base URL (default: %(default)s)",
    )
    parser.add_argument(
        "--certs-dir",
        metavar="DIR",
        type=Path,
        default=Path(os.environ.get(ENV_CERTS_DIR, DEFAULT_CERTS_DIR)),
        help="PKI directory with devices/ID.pem, devices/ID.key and server-ca.pem "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        metavar="ID",
        type=_device_id,
        default=os.environ.get(ENV_DEVICE, DEFAULT_DEVICE_ID),
        help="device id, which selects the certificate and key files (default: %(default)s)",
    )
    parser.add_argument(
        "--cert",
        metavar="PATH",
        type=Path,
        default=_env_path(ENV_CERT),
        help="device certificate (default: CERTS_DIR/devices/ID.pem); requires --key",
    )
    parser.add_argument(
        "--key",
        metavar="PATH",
        type=Path,
        default=_env_path(ENV_KEY),
        help="device private key (default: CERTS_DIR/devices/ID.key); requires --cert",
    )
    parser.add_argument(
        "--ca",
        metavar="PATH",
        type=Path,
        default=_env_path(ENV_CA),
        help="CA bundle that the server certificate must chain to "
        "(default: CERTS_DIR/server-ca.pem)",
    )
    parser.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        default=DEFAULT_TIMEOUT,
        help="timeout in seconds for each connect, read and write (default: %(default)g)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log requests and errors at debug level"
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary, add_arguments in _COMMANDS:
        add_arguments(commands.add_parser(name, help=summary, description=summary))
    return parser


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def _add_record(record: argparse.ArgumentParser) -> None:
    record.add_argument(
        "--seconds", type=_seconds, default=3.0, help="duration in seconds (default: %(default)g)"
    )
    record.add_argument(
        "--frequency",
        metavar="HZ",
        type=_positive_float,
        help="play a constant tone at this pitch in Hz instead of the default melody",
    )
    record.add_argument(
        "--out",
        metavar="FILE",
        type=Path,
        help="output file (default: ID-YYYYMMDDTHHMMSSZ.wav in the current directory)",
    )
    record.set_defaults(handler=_run_record)


def _add_upload(upload: argparse.ArgumentParser) -> None:
    upload.add_argument("file", metavar="FILE", type=Path, help="audio file to upload")
    upload.add_argument(
        "--content-type",
        default="audio/wav",
        help="media type of FILE, checked by the server (default: %(default)s)",
    )
    upload.set_defaults(handler=_run_upload)


def _add_list(listing: argparse.ArgumentParser) -> None:
    listing.add_argument(
        "--limit", type=_positive_int, help="maximum recordings to show (default: server page size)"
    )
    listing.add_argument("--cursor", help="next_cursor printed by a previous list")
    listing.set_defaults(handler=_run_list)


def _add_play(play: argparse.ArgumentParser) -> None:
    play.add_argument("recording_id", metavar="ID", help="recording id")
    play.add_argument("--out", metavar="FILE", type=Path, help="also write the audio to FILE")
    play.set_defaults(handler=_run_play)


def _add_delete(delete: argparse.ArgumentParser) -> None:
    delete.add_argument("recording_id", metavar="ID", help="recording id")
    delete.set_defaults(handler=_run_delete)


def _add_me(me: argparse.ArgumentParser) -> None:
    me.set_defaults(handler=_run_me)


def _add_scenario(scenario: argparse.ArgumentParser) -> None:
    scenario.add_argument(
        "--seconds",
        type=_seconds,
        default=3.0,
        help="duration of the recording in seconds (default: %(default)g)",
    )
    scenario.set_defaults(handler=_run_scenario)


def _add_keygen(keygen: argparse.ArgumentParser) -> None:
    keygen.add_argument(
        "--device-id", required=True, type=_device_id, help="device id, used as the CSR's CN"
    )
    keygen.add_argument(
        "--out-dir",
        metavar="DIR",
        type=Path,
        help="directory for ID.key and ID.csr (default: CERTS_DIR/devices)",
    )
    keygen.add_argument(
        "--force", action="store_true", help="replace an existing key and CSR for this device"
    )
    keygen.set_defaults(handler=_run_keygen)


# Subcommands in the order of --help: name, one-line summary, argument setup.
_COMMANDS: tuple[tuple[str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("record", "Synthesize a WAV recording (16 kHz mono PCM) into a file.", _add_record),
    ("upload", "Create a recording, upload FILE to S3, complete it and print its id.", _add_upload),
    ("list", "List this device's recordings, newest first.", _add_list),
    ("play", "Download a recording through its presigned URL and verify its SHA-256.", _add_play),
    ("delete", "Delete a recording.", _add_delete),
    ("me", "Show the device identity that the server derives from the certificate.", _add_me),
    ("scenario", "Run me, record, upload, complete, list and play end to end.", _add_scenario),
    ("keygen", "Generate a device key (ECDSA P-256) and a CSR for enrollment.", _add_keygen),
)


# --- commands ------------------------------------------------------------------------


def _open_client(args: argparse.Namespace) -> DeviceClient:
    devices_dir = args.certs_dir / "devices"
    cert_path = args.cert or devices_dir / f"{args.device}.pem"
    key_path = args.key or devices_dir / f"{args.device}.key"
    ca_path = args.ca or args.certs_dir / "server-ca.pem"
    return DeviceClient(cert_path, key_path, ca_path, args.server, timeout=args.timeout)


def _run_record(args: argparse.Namespace) -> int:
    try:
        audio = synthesize_wav(args.seconds, frequency=args.frequency)
    except ValueError as exc:
        raise SimulatorError(str(exc)) from None

    out = args.out
    if out is None:
        timestamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        out = Path(f"{args.device}-{timestamp}.wav")
    _write_file(out, audio)

    sha256 = hashlib.sha256(audio).hexdigest()
    print(f"wrote {out} ({args.seconds:g} s, {len(audio)} bytes, sha256 {sha256})")
    return 0


def _run_upload(args: argparse.Namespace) -> int:
    data = _read_file(args.file)

    with _open_client(args) as client:
        created = client.create_recording(args.content_type, data)
        recording_id = created["recording_id"]
        client.upload(created["upload"], data, args.content_type, filename=args.file.name)
        client.complete(recording_id)

    print(recording_id)
    return 0


def _run_list(args: argparse.Namespace) -> int:
    with _open_client(args) as client:
        page = client.list_recordings(limit=args.limit, cursor=args.cursor)

    recordings = page["recordings"]
    if not recordings:
        print("no recordings")
    else:
        _print_recordings(recordings)
    if page["next_cursor"] is not None:
        print(f"next cursor: {page['next_cursor']}")
    return 0


def _print_recordings(recordings: list[RecordingMetadata]) -> None:
    header = ("RECORDING ID", "STATUS", "SIZE", "CONTENT TYPE", "CREATED")
    rows = [
        (
            item["recording_id"],
            item["status"],
            str(item["size_bytes"]),
            item["content_type"],
            item["created_at"],
        )
        for item in recordings
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("  ".join(cells).rstrip())


def _run_play(args: argparse.Namespace) -> int:
    with _open_client(args) as client:
        recording = client.get_recording(args.recording_id)
        data = client.download(recording)

    print(f"sha256 verified ({len(data)} bytes, recording {recording['recording_id']})")
    if args.out is not None:
        _write_file(args.out, data)
        print(f"wrote {args.out}")
    return 0


def _run_delete(args: argparse.Namespace) -> int:
    with _open_client(args) as client:
        client.delete(args.recording_id)

    print(f"deleted recording {args.recording_id}")
    return 0


def _run_me(args: argparse.Namespace) -> int:
    with _open_client(args) as client:
        identity = client.me()

    print(f"device_id: {identity['device_id']}")
    print(f"household_id: {identity['household_id']}")
    print(f"certificate_not_after: {identity['certificate_not_after']}")
    return 0


def _run_scenario(args: argparse.Namespace) -> int:
    with _open_client(args) as client:
        result = run_scenario(client, seconds=args.seconds)

    print(f"[{result.device_id}] scenario passed: recording {result.recording_id}")
    return 0


def _run_keygen(args: argparse.Namespace) -> int:
    out_dir = args.out_dir or args.certs_dir / "devices"
    files = generate_device_key_and_csr(args.device_id, out_dir, force=args.force)

    print(f"wrote private key {files.key_path} (mode 0600; keep it on the device)")
    print(f"wrote CSR {files.csr_path}")
    print(f"public key SHA-256: {files.public_key_sha256}")
    print(
        "next: have an operator sign the CSR, then save the certificate as "
        f"{out_dir / (args.device_id + '.pem')}"
    )
    return 0


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SimulatorError(f"cannot read {path}: {exc.strerror or exc}") from None


def _write_file(path: Path, data: bytes) -> None:
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise SimulatorError(f"cannot write {path}: {exc.strerror or exc}") from None


# --- entry point ---------------------------------------------------------------------


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format=f"{PROGRAM}: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpcore logs every connection event at debug level, which buries our own lines.
    logging.getLogger("httpcore").setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `petvault-sim` and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.cert is None) != (args.key is None):
        parser.error("--cert and --key must be given together")
    _configure_logging(args.verbose)

    handler: Handler = args.handler
    try:
        return handler(args)
    except SimulatorError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROGRAM}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # An unexpected error is a simulator bug. Keep the promise of one line, but
        # keep the traceback available for the bug report.
        logger.debug("unexpected error", exc_info=True)
        print(
            f"{PROGRAM}: internal error: {type(exc).__name__}: {exc} "
            "(run with --verbose for the traceback)",
            file=sys.stderr,
        )
        return 1
