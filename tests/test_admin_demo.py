"""`petvault demo`'s last step: the operator revokes toy-2, and only toy-2 is rejected."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

PETVAULT = str(Path(sys.executable).with_name("petvault"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    workdir = tmp_path_factory.mktemp("demo")
    env = {name: value for name, value in os.environ.items() if not name.startswith("PETVAULT_")}
    certs_dir = workdir / "dev"
    result = subprocess.run(  # noqa: S603 - fixed executable, arguments from the test
        [PETVAULT, "demo", "--port", "0", "--admin-port", "0", "--certs-dir", str(certs_dir)],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=120, check=False,
    )
    return result, certs_dir


def test_demo_passes(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = demo
    assert result.returncode == 0, result.stderr


def test_demo_refuses_revoked_toy(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = demo
    assert "[toy-2] next request on the same connection: 401 certificate_revoked" in result.stdout


def test_demo_toy_1_keeps_working(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, _ = demo
    assert "toy-1 keeps working" in result.stdout


def test_demo_prints_crl_serial(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, certs_dir = demo
    certificate = x509.load_pem_x509_certificate((certs_dir / "devices" / "toy-2.pem").read_bytes())
    serial = format(certificate.serial_number, "x")
    crl_lines = result.stdout.split("GET /admin/v1/crl:", 1)[1].splitlines()[1:]
    assert [line.strip() for line in crl_lines if line.startswith("  ")] == [serial]


def test_demo_writes_operator_certificate(
    demo: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, certs_dir = demo
    assert (certs_dir / "operators" / "demo-operator.pem").is_file()
    assert (certs_dir / "operators" / "demo-operator.key").stat().st_mode & 0o777 == 0o600


def test_demo_writes_crl_file(demo: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, certs_dir = demo
    assert len(x509.load_pem_x509_crl((certs_dir / "device-ca.crl.pem").read_bytes())) == 1
