"""Startup failures of `petvault serve` and `petvault demo`: one clear line, no traceback.

Invalid settings exit 2 with one line per variable. A MongoDB server that cannot be
used at startup exits 1 with one line that names its hosts but never the URI, which
can contain a password. Subprocesses run in an empty working directory, so no `.env`
file applies, and connect only to closed loopback ports.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic_settings import SettingsError

from certs.pki import PkiLayout
from service import cli
from tests.clients import closed_port

PETVAULT = str(Path(sys.executable).with_name("petvault"))


def _petvault(*arguments: str, environment: dict[str, str], cwd: Path
              ) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PETVAULT_")}
    env.update(environment)
    env.update(PETVAULT_PORT="0", PETVAULT_ADMIN_PORT="0", PETVAULT_HEALTH_PORT="0")
    return subprocess.run(  # noqa: S603 - fixed executable, arguments from the test
        [PETVAULT, *arguments], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False,
    )


def _load_settings_error(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                         tmp_path: Path, **variables: str) -> tuple[int | str | None, list[str]]:
    """Run `load_settings` with only `variables` set; return its exit code and stderr lines."""
    for name in os.environ:
        if name.startswith("PETVAULT_"):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit) as caught:
        cli.load_settings()
    return caught.value.code, capsys.readouterr().err.splitlines()


# --- invalid settings ----------------------------------------------------------------

CONTENT_TYPE_VALUES = [
    pytest.param("", "is empty", id="empty"),
    pytest.param("[", "is not a valid JSON list", id="open bracket"),
    pytest.param('["audio/wav"', "is not a valid JSON list", id="unterminated list"),
    pytest.param("[1]", "Input should be a valid string", id="list of numbers"),
]


@pytest.mark.parametrize(("value", "problem"), CONTENT_TYPE_VALUES)
def test_content_types_error_one_line(
    value: str, problem: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    code, lines = _load_settings_error(monkeypatch, capsys, tmp_path,
                                       PETVAULT_ALLOWED_CONTENT_TYPES=value)

    assert code == 2
    assert lines[0] == "petvault: invalid configuration:"
    assert len(lines) == 2
    assert lines[1].startswith("  PETVAULT_ALLOWED_CONTENT_TYPES")
    assert not lines[1].startswith("  PETVAULT_ALLOWED_CONTENT_TYPES_")  # no such variable
    assert problem in lines[1]


def test_nested_error_names_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, lines = _load_settings_error(monkeypatch, capsys, tmp_path,
                                       PETVAULT_RATE_LIMIT_OVERRIDES='{"toy-1": 5}')

    assert code == 2
    assert lines[1].startswith("  PETVAULT_RATE_LIMIT_OVERRIDES (at toy-1): ")
    assert "PETVAULT_RATE_LIMIT_OVERRIDES_" not in lines[1]


def test_validator_error_without_prefix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, lines = _load_settings_error(monkeypatch, capsys, tmp_path,
                                       PETVAULT_ADMIN_HOST="8.8.8.8")

    assert code == 2
    assert lines[1].startswith("  PETVAULT_ADMIN_HOST 8.8.8.8 is not a loopback")
    assert "Value error" not in lines[1]


def test_settings_error_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def raise_settings_error() -> None:
        raise SettingsError('error parsing value for field "port" from source "EnvSettingsSource"')

    monkeypatch.setattr(cli, "Settings", raise_settings_error)
    code, lines = _load_settings_error(monkeypatch, capsys, tmp_path)

    assert code == 2
    assert lines == ['petvault: invalid configuration: error parsing value for field "port" '
                     'from source "EnvSettingsSource"']


@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_serve_rejects_port_option(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.build_parser().parse_args(["serve", "--port", port])

    assert caught.value.code == 2
    assert "argument --port: must be a port number from 0 to 65535" in capsys.readouterr().err


# --- services that fail at startup ---------------------------------------------------


def test_serve_mongodb_unavailable_one_line(pki: PkiLayout, tmp_path: Path) -> None:
    port = closed_port()
    completed = _petvault("serve", cwd=tmp_path, environment={
        "PETVAULT_MONGODB_URI": f"mongodb://petvault:s3cret-pw@127.0.0.1:{port}/petvault",
        "PETVAULT_MONGODB_TIMEOUT_MS": "300",
        "PETVAULT_CERTS_DIR": str(pki.directory),
        "PETVAULT_S3_BUCKET": "recordings",
    })

    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.splitlines()[-1].startswith(
        "petvault: MongoDB at 127.0.0.1 is unavailable at startup (creating indexes failed")
    assert "s3cret-pw" not in completed.stderr


def test_serve_register_junk_file_one_line(pki: PkiLayout, tmp_path: Path) -> None:
    devices = tmp_path / "devices"
    devices.mkdir()
    (devices / "notes.pem").write_text("not a certificate\n")

    completed = _petvault("serve", cwd=tmp_path, environment={
        "PETVAULT_CERTS_DIR": str(pki.directory),
        "PETVAULT_S3_BUCKET": "recordings",
        "PETVAULT_REGISTER_DEVICES_FROM": str(devices),
    })

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.splitlines()[-1] == (
        f"petvault: PETVAULT_REGISTER_DEVICES_FROM: {devices}/notes.pem is not a PEM "
        "certificate; remove it or replace it with a device certificate"
    )


def test_demo_corrupt_ca_key_one_line(pki: PkiLayout, tmp_path: Path) -> None:
    certs_dir = tmp_path / "dev"
    certs_dir.mkdir()
    shutil.copy(pki.device_ca_cert, certs_dir / "device-ca.pem")
    (certs_dir / "device-ca.key").write_text("not a key\n")

    completed = _petvault("demo", "--port", "0", "--admin-port", "0",
                          "--certs-dir", str(certs_dir), cwd=tmp_path, environment={})

    assert completed.returncode == 1
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().startswith(
        "petvault demo FAILED: demo step 'prepare certificates' failed: CA private key")


def test_serve_missing_tls_cert_one_line(pki: PkiLayout, tmp_path: Path) -> None:
    missing = tmp_path / "absent-server.pem"
    completed = _petvault("serve", cwd=tmp_path, environment={
        "PETVAULT_CERTS_DIR": str(pki.directory),
        "PETVAULT_S3_BUCKET": "recordings",
        "PETVAULT_TLS_CERT": str(missing),
    })

    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert f"PETVAULT_TLS_CERT '{missing}' cannot be read" in completed.stderr
