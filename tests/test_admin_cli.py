"""`petvault admin`: the admin API from the command line, against a real server."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
from cryptography import x509

from certs.pki import PkiLayout
from service.cli import build_parser
from tests.clients import device_context
from tests.conftest import OPERATOR
from tests.enrollment import serial_of
from tests.harness import RunningServer


def _admin(pki: PkiLayout, server: RunningServer, *arguments: str) -> int:
    parser = build_parser()
    args = parser.parse_args([
        "admin", "--server", server.admin_url, "--dir", str(pki.directory),
        "--operator", OPERATOR, *arguments,
    ])
    status: int = args.func(args)
    return status


def _me(connection: http.client.HTTPSConnection) -> int:
    connection.request("GET", "/v1/me")
    response = connection.getresponse()
    response.read()
    return response.status


def test_cli_revoke_rejects_open_connection(pki: PkiLayout, server: RunningServer,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    connection = http.client.HTTPSConnection("127.0.0.1", server.port,
                                             context=device_context(pki, "toy-1"), timeout=10)
    assert _me(connection) == 200

    status = _admin(pki, server, "revoke", "toy-1", "--reason", "keyCompromise")

    assert status == 0
    assert "revoked device toy-1" in capsys.readouterr().out
    assert _me(connection) == 401
    connection.close()


def test_cli_revoke_twice_reports_original(pki: PkiLayout, server: RunningServer,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _admin(pki, server, "revoke", "toy-1", "--reason", "keyCompromise")
    capsys.readouterr()
    assert _admin(pki, server, "revoke", "toy-1", "--reason", "superseded") == 0
    assert "already revoked" in capsys.readouterr().out


def test_cli_revoke_certificate(pki: PkiLayout, server: RunningServer,
                                capsys: pytest.CaptureFixture[str]) -> None:
    serial = serial_of(pki.device_cert("toy-2").read_bytes())
    assert _admin(pki, server, "revoke-certificate", serial, "--reason", "superseded") == 0
    assert f"revoked certificate {serial}" in capsys.readouterr().out


def test_cli_crl_lists_serial(pki: PkiLayout, server: RunningServer, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    _admin(pki, server, "revoke", "toy-2", "--reason", "keyCompromise")
    capsys.readouterr()
    out = tmp_path / "devices.crl"

    assert _admin(pki, server, "crl", "--out", str(out)) == 0

    serial = serial_of(pki.device_cert("toy-2").read_bytes())
    assert serial in capsys.readouterr().out
    assert format(list(x509.load_der_x509_crl(out.read_bytes()))[0].serial_number, "x") == serial


def test_cli_crl_writes_pem(pki: PkiLayout, server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "devices.crl.pem"
    assert _admin(pki, server, "crl", "--out", str(out), "--pem") == 0
    assert x509.load_pem_x509_crl(out.read_bytes()) is not None


def test_cli_suspend_and_reactivate(pki: PkiLayout, server: RunningServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _admin(pki, server, "suspend", "toy-3") == 0
    assert _admin(pki, server, "reactivate", "toy-3") == 0
    output = capsys.readouterr().out
    assert "suspended toy-3" in output
    assert "reactivated toy-3" in output


def test_cli_devices_lists_all(pki: PkiLayout, server: RunningServer,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert _admin(pki, server, "devices") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["toy-1", "toy-2", "toy-3"]


def test_cli_device_shows_certificates(pki: PkiLayout, server: RunningServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _admin(pki, server, "devices", "toy-1") == 0
    assert serial_of(pki.device_cert("toy-1").read_bytes()) in capsys.readouterr().out


def test_cli_json_output(pki: PkiLayout, server: RunningServer,
                         capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args([
        "admin", "--server", server.admin_url, "--dir", str(pki.directory),
        "--operator", OPERATOR, "--json", "devices", "toy-1",
    ])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)["device_id"] == "toy-1"


def test_cli_audit_prints_entries(pki: PkiLayout, server: RunningServer,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    _admin(pki, server, "suspend", "toy-3")
    capsys.readouterr()
    assert _admin(pki, server, "audit") == 0
    assert f"operator:{OPERATOR} device.suspend toy-3 success" in capsys.readouterr().out


def test_cli_unknown_device_exits_1(pki: PkiLayout, server: RunningServer,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _admin(pki, server, "suspend", "toy-404") == 1
    assert capsys.readouterr().err.strip() == "error: HTTP 404 not_found: device not found"


def test_cli_connection_refused_exits_2(pki: PkiLayout, capsys: pytest.CaptureFixture[str]
                                        ) -> None:
    args = build_parser().parse_args([
        "admin", "--server", "https://127.0.0.1:9", "--dir", str(pki.directory),
        "--operator", OPERATOR, "devices",
    ])
    assert args.func(args) == 2
    assert capsys.readouterr().err.startswith("error: cannot connect to https://127.0.0.1:9")


def test_cli_without_operator_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["admin", "--dir", str(tmp_path), "devices"])
    assert args.func(args) == 2
    assert "pass --operator NAME" in capsys.readouterr().err


def test_cli_device_certificate_rejected(pki: PkiLayout, server: RunningServer,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args([
        "admin", "--server", server.admin_url, "--dir", str(pki.directory),
        "--cert", str(pki.device_cert("toy-1")), "--key", str(pki.device_key("toy-1")), "devices",
    ])
    assert args.func(args) == 2
    assert "rejects certificates that are not from the operator CA" in capsys.readouterr().err


def test_cli_rejects_invalid_reason(pki: PkiLayout, server: RunningServer) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _admin(pki, server, "revoke", "toy-1", "--reason", "stolen")
    assert exit_info.value.code == 2


def test_cli_rate_limits_sets_override(pki: PkiLayout, server: RunningServer,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    status = _admin(pki, server, "rate-limits", "toy-1", "--default", "2/minute",
                    "--download", "30/minute")

    output = capsys.readouterr().out
    assert status == 0
    assert "default   2/minute" in output
    assert "download  30 per 1 minute" in output
    assert "upload    counts against default" in output
    connection = http.client.HTTPSConnection("127.0.0.1", server.port,
                                             context=device_context(pki, "toy-1"), timeout=10)
    assert [_me(connection) for _ in range(3)] == [200, 200, 429]
    connection.close()


def test_cli_rate_limits_shows_override(pki: PkiLayout, server: RunningServer,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _admin(pki, server, "rate-limits", "toy-1", "--upload", "5/minute")
    capsys.readouterr()

    assert _admin(pki, server, "rate-limits", "toy-1") == 0

    output = capsys.readouterr().out
    assert "rate-limit override of toy-1:" in output
    assert "upload    5/minute" in output
    assert "default   not overridden" in output


def test_cli_rate_limits_clear(pki: PkiLayout, server: RunningServer,
                               capsys: pytest.CaptureFixture[str]) -> None:
    _admin(pki, server, "rate-limits", "toy-1", "--default", "2/minute")
    capsys.readouterr()

    assert _admin(pki, server, "rate-limits", "toy-1", "--clear") == 0

    output = capsys.readouterr().out
    assert "toy-1 has no rate-limit override" in output
    assert "default   60 per 1 minute; 200 per 1 hour; 400 per 1 day" in output


def test_cli_rate_limits_invalid_exits_1(pki: PkiLayout, server: RunningServer,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert _admin(pki, server, "rate-limits", "toy-1", "--upload", "0/minute") == 1
    assert capsys.readouterr().err.strip() == (
        "error: HTTP 422 invalid_rate_limits: upload: '0 per 1 minute' allows no request; "
        "suspend the device instead"
    )


def test_cli_rate_limits_clear_with_limits_exits_2(pki: PkiLayout, server: RunningServer,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    status = _admin(pki, server, "rate-limits", "toy-1", "--clear", "--default", "2/minute")

    assert status == 2
    assert "--clear removes the whole override" in capsys.readouterr().err
