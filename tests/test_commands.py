"""`petvault demo` and `petvault certs inspect`, run as a user runs them."""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs.authority import generate_private_key
from certs.files import write_certificate
from certs.leaf import build_leaf_certificate
from certs.pki import PkiLayout, load_certificate_authority
from tests.certificates import common_name, device_uri

PETVAULT = str(Path(sys.executable).with_name("petvault"))


def _petvault(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PETVAULT_")}
    return subprocess.run(  # noqa: S603 - fixed executable, arguments from the test
        [PETVAULT, *arguments], env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
        check=False,
    )


# --- petvault demo --------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> subprocess.CompletedProcess[str]:
    workdir = tmp_path_factory.mktemp("demo")
    return _petvault("demo", "--port", "0", "--admin-port", "0", "--certs-dir",
                     str(workdir / "dev"), cwd=workdir)


def test_demo_exits_0(demo: subprocess.CompletedProcess[str]) -> None:
    assert demo.returncode == 0, demo.stderr


@pytest.mark.parametrize("device_id", ["toy-1", "toy-2"])
@pytest.mark.parametrize("step", ["me", "record", "upload", "complete", "list", "play"])
def test_demo_prints_step(device_id: str, step: str,
                          demo: subprocess.CompletedProcess[str]) -> None:
    assert f"[{device_id}] {step}:" in demo.stdout


def test_demo_cross_device_read_gets_404(demo: subprocess.CompletedProcess[str]) -> None:
    lines = [line for line in demo.stdout.splitlines() if line.startswith("[toy-2] get ")]

    assert len(lines) == 1
    assert ": 404 not_found" in lines[0]


def test_demo_reports_pass(demo: subprocess.CompletedProcess[str]) -> None:
    assert "petvault demo passed" in demo.stdout


# --- petvault certs inspect ----------------------------------------------------------


def test_certs_inspect_flags_expired(pki: PkiLayout, tmp_path: Path) -> None:
    ca = load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)
    now = datetime.datetime.now(datetime.UTC)
    expired = build_leaf_certificate(
        ca, generate_private_key().public_key(),
        subject=x509.Name([common_name("toy-old")]), san=[device_uri("toy-old")],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        not_before=now - datetime.timedelta(days=30), not_after=now - datetime.timedelta(days=1),
    )
    expired_path = tmp_path / "expired.pem"
    write_certificate(expired_path, expired, force=False)

    completed = _petvault("certs", "inspect", str(pki.device_cert("toy-1")), str(expired_path),
                          cwd=tmp_path)
    statuses = [line.split(maxsplit=1)[1] for line in completed.stdout.splitlines()
                if line.strip().startswith("status")]

    assert completed.returncode == 1  # some certificate is expired
    assert statuses == ["OK", "EXPIRED"]
