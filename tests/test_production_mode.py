"""Production mode rejects insecure settings, and a MongoDB URI needs escaped credentials.

`petvault serve` runs as a subprocess with only the variables under test, in an empty
working directory so no `.env` file applies. Every rejection happens before any
connection is attempted. The hosts are under `.invalid` (RFC 6761) all the same.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from certs.authority import generate_private_key
from certs.pki import PkiLayout
from service.config import ConfigError, Settings, production_problems
from service.runtime import create_mongo_client

PETVAULT = str(Path(sys.executable).with_name("petvault"))


def _serve(environment: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("PETVAULT_")}
    env.update(environment)
    # Ephemeral ports, in case a check under test lets startup go further than expected.
    env.update(PETVAULT_PORT="0", PETVAULT_ADMIN_PORT="0", PETVAULT_HEALTH_PORT="0")
    return subprocess.run(  # noqa: S603 - fixed executable, arguments from the test
        [PETVAULT, "serve"], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
        check=False,
    )


# --- petvault serve in production mode ----------------------------------------------


@pytest.fixture(scope="module")
def insecure_production(
    pki: PkiLayout, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    return _serve(
        {
            "PETVAULT_ENV": "production",
            "PETVAULT_MONGODB_URI": "mongodb://db.petvault.invalid:27017/petvault",
            "PETVAULT_CERTS_DIR": str(pki.directory),
        },
        tmp_path_factory.mktemp("production"),
    )


def test_production_rejection_exits_2(
    insecure_production: subprocess.CompletedProcess[str],
) -> None:
    assert insecure_production.returncode == 2


@pytest.mark.parametrize(
    "problem",
    [
        pytest.param("PETVAULT_MONGODB_URI has no credentials", id="no credentials"),
        pytest.param("PETVAULT_MONGODB_URI connects to db.petvault.invalid without TLS",
                     id="no TLS to a remote host"),
        pytest.param("is the development CA", id="development device CA"),
        pytest.param("PETVAULT_S3_BUCKET is not set", id="no bucket"),
    ],
)
def test_production_rejection_lists_problem(
    problem: str, insecure_production: subprocess.CompletedProcess[str]
) -> None:
    problem_lines = [line for line in insecure_production.stderr.splitlines()
                     if line.startswith("  - ")]

    assert any(problem in line for line in problem_lines), insecure_production.stderr


# --- unescaped credentials in the MongoDB URI ---------------------------------------


def test_unescaped_password_fails_startup(pki: PkiLayout, tmp_path: Path) -> None:
    # Development mode: the URI check is not only a production rule.
    completed = _serve(
        {
            "PETVAULT_MONGODB_URI": "mongodb://app:h@ckme@db.petvault.invalid/petvault",
            "PETVAULT_CERTS_DIR": str(pki.directory),
            "PETVAULT_S3_BUCKET": "recordings",
        },
        tmp_path,
    )

    assert completed.returncode == 2
    assert "percent-encode" in completed.stderr
    assert "h@ckme" not in completed.stderr  # the password is never echoed


@pytest.mark.parametrize(
    "password",
    [pytest.param("h@ckme", id="at sign"), pytest.param("sl/ash", id="slash"),
     pytest.param("co:lon", id="colon")],
)
def test_unescaped_password_rejected_by_client_factory(password: str) -> None:
    # The function that `petvault serve` calls first at startup, in process.
    settings = Settings(_env_file=None,  # type: ignore[call-arg]
                        mongodb_uri=f"mongodb://app:{password}@db.petvault.invalid/petvault")

    with pytest.raises(ConfigError, match="percent-encode") as raised:
        create_mongo_client(settings)

    assert password not in str(raised.value)


# --- production_problems --------------------------------------------------------------


@pytest.fixture(scope="module")
def production_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device CA that is not the development one: no development organization."""
    key = generate_private_key()
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Toys Inc."),
                      x509.NameAttribute(NameOID.COMMON_NAME, "Example Toys device CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path_factory.mktemp("production-ca") / "device-ca.pem"
    path.write_bytes(certificate.public_bytes(Encoding.PEM))
    return path


CLEAN_URI = "mongodb://petvault:s3cret@db.petvault.invalid:27017/petvault?tls=true"


def _production(production_ca: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "production",
        "mongodb_uri": CLEAN_URI,
        "s3_bucket": "petvault-recordings",
        "device_ca": production_ca,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_clean_production_has_no_problems(production_ca: Path) -> None:
    assert production_problems(_production(production_ca)) == []


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("mongodb+srv://petvault:s3cret@cluster.petvault.invalid/petvault",
                     id="SRV, TLS by default"),
        pytest.param("mongodb://petvault:s3cret@127.0.0.1:27017/petvault", id="loopback"),
        pytest.param("mongodb://petvault:s3cret@localhost/petvault", id="localhost"),
        pytest.param("mongodb://petvault:s3cret@[::1]:27017/petvault", id="IPv6 loopback"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/petvault?ssl=true",
                     id="ssl=true"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/petvault?TLS=True",
                     id="option case"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tlsCAFile=/etc/mongo-ca.pem",
                     id="tlsCAFile implies TLS"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/petvault?w=1;tls=true",
                     id="semicolon separators"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true&tlsInsecure=false",
                     id="tlsInsecure=false"),
        pytest.param("mongodb://db.petvault.invalid/?tls=true&authMechanism=MONGODB-X509"
                     "&tlsCertificateKeyFile=/etc/petvault/mongodb-client.pem",
                     id="X.509 without userinfo"),
        pytest.param("mongodb+srv://cluster.petvault.invalid/?authMechanism=MONGODB-AWS"
                     "&authSource=%24external", id="AWS IAM without userinfo"),
        pytest.param("mongodb+srv://cluster.petvault.invalid/?authMechanism=MONGODB-OIDC"
                     "&authMechanismProperties=ENVIRONMENT:k8s", id="OIDC without userinfo"),
    ],
)
def test_secure_uri_accepted(uri: str, production_ca: Path) -> None:
    assert production_problems(_production(production_ca, mongodb_uri=uri)) == []


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        pytest.param("mongodb+srv://petvault:s3cret@cluster.petvault.invalid/?tls=false",
                     "without TLS", id="SRV with tls=false"),
        pytest.param("mongodb+srv://petvault:s3cret@cluster.petvault.invalid/?ssl=false",
                     "without TLS", id="SRV with ssl=false"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tlsInsecure=true",
                     "without TLS", id="tlsInsecure is not tls"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid,127.0.0.1/?w=1",
                     "without TLS", id="one remote host of two"),
        pytest.param("mongodb://db.petvault.invalid/?tls=true", "no credentials",
                     id="no credentials"),
        pytest.param("mongodb://petvault:p@ss@db.petvault.invalid/?tls=true",
                     "percent-encode", id="unescaped at sign"),
        pytest.param("mongodb://:@db.petvault.invalid/?tls=true", "empty user name",
                     id="empty user name"),
        pytest.param("mongodb://db.petvault.invalid/?tls=true&authMechanism=SCRAM-SHA-256",
                     "no credentials", id="SCRAM without userinfo"),
        pytest.param("mongodb://db.petvault.invalid/?tls=true&authMechanism=mongodb-x509",
                     "no credentials", id="mechanism in lowercase"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true&tlsInsecure=true",
                     "sets tlsInsecure", id="tlsInsecure"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true"
                     "&tlsAllowInvalidCertificates=true", "sets tlsAllowInvalidCertificates",
                     id="tlsAllowInvalidCertificates"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true"
                     "&tlsAllowInvalidHostnames=true", "sets tlsAllowInvalidHostnames",
                     id="tlsAllowInvalidHostnames"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true&TLSINSECURE=true",
                     "sets tlsInsecure", id="tlsInsecure in uppercase"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true"
                     "&tlsallowinvalidhostnames=true", "sets tlsAllowInvalidHostnames",
                     id="tlsAllowInvalidHostnames in lowercase"),
        pytest.param("mongodb+srv://petvault:s3cret@cluster.petvault.invalid/"
                     "?tlsAllowInvalidCertificates=true", "sets tlsAllowInvalidCertificates",
                     id="SRV with tlsAllowInvalidCertificates"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true;tlsInsecure=true",
                     "sets tlsInsecure", id="semicolon separators"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true"
                     "&tlsInsecure=false&tlsInsecure=true", "sets tlsInsecure",
                     id="tlsInsecure repeated"),
        pytest.param("mongodb://petvault:s3cret@db.petvault.invalid/?tls=true&tlsInsecure=True",
                     "sets tlsInsecure", id="tlsInsecure=True"),
        pytest.param("mongodb://petvault:s3cret@127.0.0.1/?tlsAllowInvalidHostnames=true",
                     "sets tlsAllowInvalidHostnames", id="loopback host"),
    ],
)
def test_insecure_uri_rejected(uri: str, problem: str, production_ca: Path) -> None:
    problems = production_problems(_production(production_ca, mongodb_uri=uri))

    assert any(problem in line for line in problems), problems
