"""`petvault admin` failures: one `error:` line that names the file, option or rule.

Local problems (a missing or expired credential, an id that cannot be sent) exit 2
before any connection. Rejections by the API exit 1 with its status and code.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509

from certs.naming import OPERATOR_URI_PREFIX
from certs.pki import PkiLayout, load_certificate_authority
from service.cli import build_parser
from tests.certificates import common_name, issue_client_certificate
from tests.clients import closed_port
from tests.conftest import OPERATOR
from tests.harness import RunningServer


def _admin(*arguments: str) -> int:
    args = build_parser().parse_args(["admin", *arguments])
    status: int = args.func(args)
    return status


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("error: ")
    return err.strip()


def _unused_server() -> str:
    return f"https://127.0.0.1:{closed_port()}"


# --- credential files ------------------------------------------------------------------


def test_unknown_operator_names_file(pki: PkiLayout, capsys: pytest.CaptureFixture[str]) -> None:
    status = _admin("--server", _unused_server(), "--dir", str(pki.directory),
                    "--operator", "nobody", "devices")

    assert status == 2
    assert _error_line(capsys) == (
        f"error: no certificate for operator nobody: {pki.directory}/operators/nobody.pem "
        f"not found; create it with `petvault certs issue-operator nobody --dir "
        f"{pki.directory}`, or pass --cert and --key"
    )


@pytest.mark.parametrize(("option", "role"), [
    pytest.param("--ca", "server CA", id="server CA"),
    pytest.param("--cert", "operator certificate", id="certificate"),
    pytest.param("--key", "operator key", id="key"),
])
def test_missing_file_is_named(option: str, role: str, pki: PkiLayout, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    files = {"--ca": str(pki.server_ca_cert), "--cert": str(pki.operator_cert(OPERATOR)),
             "--key": str(pki.operator_key(OPERATOR))}
    missing = tmp_path / "missing.pem"
    files[option] = str(missing)
    arguments = [item for pair in files.items() for item in pair]

    status = _admin("--server", _unused_server(), *arguments, "devices")

    assert status == 2
    assert _error_line(capsys) == f"error: {role} file {missing} not found"


def test_expired_operator_certificate(pki: PkiLayout, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    operator_ca = load_certificate_authority(pki.operator_ca_cert, pki.operator_ca_key)
    now = datetime.datetime.now(datetime.UTC)
    credentials = issue_client_certificate(
        operator_ca, tmp_path, "expired", subject=[common_name("old-ops")],
        san=[x509.UniformResourceIdentifier(OPERATOR_URI_PREFIX + "old-ops")],
        not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(days=1),
    )

    status = _admin("--server", _unused_server(), "--dir", str(pki.directory),
                    "--cert", str(credentials.cert_path), "--key", str(credentials.key_path),
                    "devices")

    line = _error_line(capsys)
    assert status == 2
    assert line.startswith(f"error: operator certificate {credentials.cert_path} expired at ")
    assert "not from the operator CA" not in line


# --- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "device_id"), [
    pytest.param("devices", "..", id="devices .."),
    pytest.param("suspend", ".", id="suspend ."),
    pytest.param("reactivate", "..", id="reactivate .."),
])
def test_dot_segment_id_rejected_locally(command: str, device_id: str, pki: PkiLayout,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    status = _admin("--server", _unused_server(), "--dir", str(pki.directory),
                    "--operator", OPERATOR, command, device_id)

    assert status == 2
    assert _error_line(capsys).startswith(f"error: invalid id '{device_id}'")


@pytest.mark.parametrize("limit", ["abc", "0"])
def test_audit_limit_states_rule(limit: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        _admin("audit", "--limit", limit)

    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        f"argument --limit: must be a whole number, 1 or more, got '{limit}'")


# --- rejections by the API -------------------------------------------------------------


def test_audit_since_out_of_range(pki: PkiLayout, server: RunningServer,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    status = _admin("--server", server.admin_url, "--dir", str(pki.directory),
                    "--operator", OPERATOR, "audit", "--since", "9999-12-31T23:59:59-10:00")

    assert status == 1
    assert _error_line(capsys).startswith(
        "error: HTTP 422 invalid_request: since is out of range")


def test_enroll_operator_certificate(pki: PkiLayout, server: RunningServer,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    status = _admin("--server", server.admin_url, "--dir", str(pki.directory),
                    "--operator", OPERATOR, "enroll", "toy-new", "--household-id", "home-1",
                    "--certificate", str(pki.operator_cert(OPERATOR)))

    assert status == 1
    assert _error_line(capsys) == (
        "error: HTTP 422 invalid_certificate: cert_pem is an operator certificate, "
        "not a device certificate"
    )
