"""Tests for the certs package: development PKI, issuing, CSR signing and inspect."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from certs import cli
from certs.authority import CLOCK_SKEW_ALLOWANCE, create_dev_ca
from certs.clock import utc_now
from certs.files import OutputFileExistsError
from certs.inspect import Validity, check_certificate, display_name
from certs.naming import (
    DEVICE_ID_RULE,
    InvalidNameError,
    validate_device_id,
    validate_operator_name,
)
from certs.pki import (
    DEV_PKI_ORGANIZATION,
    CertificateAuthority,
    CertificateAuthorityError,
    CsrRejectedError,
    PkiLayout,
    ValidityError,
    build_leaf_certificate,
    init_dev_pki,
    is_development_ca,
    issue_device_certificate,
    issue_operator_certificate,
    load_certificate_authority,
    sign_device_csr,
    write_private_key,
)

ExtensionT = TypeVar("ExtensionT", bound=x509.ExtensionType)

NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


# --- helpers -----------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> PkiLayout:
    return init_dev_pki(tmp_path / "pki")


@pytest.fixture
def device_ca(pki: PkiLayout) -> CertificateAuthority:
    return load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def extension(cert: x509.Certificate, kind: type[ExtensionT]) -> x509.Extension[ExtensionT]:
    return cert.extensions.get_extension_for_class(kind)


def common_names(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def make_csr(
    key: CertificateIssuerPrivateKeyTypes,
    common_name: str = "toy-42",
    extensions: list[x509.ExtensionType] | None = None,
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    for ext in extensions or []:
        builder = builder.add_extension(ext, critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM)


def weak_rsa_key() -> rsa.RSAPrivateKey:
    # A key the CSR policy must reject, so its weakness is the point.
    return rsa.generate_private_key(65537, 1024)  # noqa: S505


def pem_wrap(der: bytes, label: str) -> bytes:
    body = base64.encodebytes(der).decode("ascii")
    return f"-----BEGIN {label}-----\n{body}-----END {label}-----\n".encode()


def leaf(
    ca: CertificateAuthority,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    subject: x509.Name | None = None,
) -> x509.Certificate:
    return build_leaf_certificate(
        ca,
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        subject=subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "toy-1")]),
        san=[],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        not_before=not_before,
        not_after=not_after,
    )


def write_pem(path: Path, *certs: x509.Certificate) -> Path:
    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


# --- init ----------------------------------------------------------------------


def test_init_creates_all_files(pki: PkiLayout) -> None:
    for path in pki.dev_pki_files():
        assert path.is_file(), path


def test_init_file_names_are_fixed(pki: PkiLayout) -> None:
    names = sorted(p.name for p in pki.directory.iterdir())
    assert names == sorted(
        [
            "device-ca.pem",
            "device-ca.key",
            "operator-ca.pem",
            "operator-ca.key",
            "server-ca.pem",
            "server-ca.key",
            "server.pem",
            "server.key",
        ]
    )


@pytest.mark.parametrize(
    "key_file", ["device-ca.key", "operator-ca.key", "server-ca.key", "server.key"]
)
def test_init_keys_are_0600(pki: PkiLayout, key_file: str) -> None:
    assert file_mode(pki.directory / key_file) == 0o600


def test_init_directory_is_0700(pki: PkiLayout) -> None:
    assert file_mode(pki.directory) == 0o700


def test_init_rejects_existing_file(tmp_path: Path) -> None:
    layout = PkiLayout(tmp_path)
    layout.server_key.write_bytes(b"keep me")

    with pytest.raises(OutputFileExistsError) as caught:
        init_dev_pki(tmp_path)

    assert str(layout.server_key) in str(caught.value)
    assert layout.server_key.read_bytes() == b"keep me"
    assert not layout.device_ca_key.exists()  # nothing written before the error


def test_init_force_replaces_files(pki: PkiLayout) -> None:
    old_ca = load_cert(pki.device_ca_cert)

    init_dev_pki(pki.directory, force=True)

    assert load_cert(pki.device_ca_cert) != old_ca
    assert file_mode(pki.device_ca_key) == 0o600


def test_init_cli_rejects_existing_file(pki: PkiLayout, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["certs", "init", "--dir", str(pki.directory)])

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert str(pki.device_ca_cert) in err
    assert "--force" in err


def test_init_cli_force_succeeds(pki: PkiLayout, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["certs", "init", "--dir", str(pki.directory), "--force"])

    assert code == 0
    assert capsys.readouterr().err == ""


# --- CAs -----------------------------------------------------------------------


@pytest.mark.parametrize("ca_file", ["device-ca.pem", "operator-ca.pem", "server-ca.pem"])
def test_dev_ca_is_marked(pki: PkiLayout, ca_file: str) -> None:
    cert = load_cert(pki.directory / ca_file)
    organizations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [o.value for o in organizations] == [DEV_PKI_ORGANIZATION]
    assert is_development_ca(cert)


def test_is_development_ca_false_without_marker(device_ca: CertificateAuthority) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme Toys")])
    cert = leaf(device_ca, NOW, NOW + DAY, subject=subject)
    assert not is_development_ca(cert)


@pytest.mark.parametrize("ca_file", ["device-ca.pem", "operator-ca.pem", "server-ca.pem"])
def test_dev_ca_extensions(pki: PkiLayout, ca_file: str) -> None:
    cert = load_cert(pki.directory / ca_file)
    constraints = extension(cert, x509.BasicConstraints)
    usage = extension(cert, x509.KeyUsage).value

    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert usage.digital_signature
    assert extension(cert, x509.SubjectKeyIdentifier).value.digest


@pytest.mark.parametrize("ca_file", ["device-ca.pem", "operator-ca.pem", "server-ca.pem"])
def test_dev_ca_uses_p256_sha256(pki: PkiLayout, ca_file: str) -> None:
    cert = load_cert(pki.directory / ca_file)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)


def test_dev_cas_are_distinct(pki: PkiLayout) -> None:
    keys = {
        load_cert(path)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        for path in (pki.device_ca_cert, pki.operator_ca_cert, pki.server_ca_cert)
    }
    assert len(keys) == 3


def test_load_ca_missing_names_init(tmp_path: Path) -> None:
    layout = PkiLayout(tmp_path)
    with pytest.raises(CertificateAuthorityError, match="petvault certs init"):
        load_certificate_authority(layout.device_ca_cert, layout.device_ca_key)


def test_load_ca_rejects_mismatched_key(pki: PkiLayout) -> None:
    with pytest.raises(CertificateAuthorityError, match="does not match"):
        load_certificate_authority(pki.device_ca_cert, pki.operator_ca_key)


def test_load_ca_rejects_leaf_certificate(pki: PkiLayout) -> None:
    with pytest.raises(CertificateAuthorityError, match="not a CA certificate"):
        load_certificate_authority(pki.server_cert, pki.server_key)


# --- server certificate -------------------------------------------------------


def test_server_cert_covers_loopback(pki: PkiLayout) -> None:
    san = extension(load_cert(pki.server_cert), x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_server_cert_eku_is_server_auth_only(pki: PkiLayout) -> None:
    eku = extension(load_cert(pki.server_cert), x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_server_cert_chains_to_server_ca(pki: PkiLayout) -> None:
    cert = load_cert(pki.server_cert)
    assert issued_by(cert, load_cert(pki.server_ca_cert))
    assert not issued_by(cert, load_cert(pki.device_ca_cert))


def test_server_cert_aki_matches_ca_ski(pki: PkiLayout) -> None:
    aki = extension(load_cert(pki.server_cert), x509.AuthorityKeyIdentifier).value
    ski = extension(load_cert(pki.server_ca_cert), x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


# --- device certificates --------------------------------------------------------


@pytest.fixture
def device_files(pki: PkiLayout) -> tuple[Path, Path]:
    return issue_device_certificate(pki.directory, "toy-42")


def test_device_cert_paths(pki: PkiLayout, device_files: tuple[Path, Path]) -> None:
    assert device_files == (pki.devices_dir / "toy-42.pem", pki.devices_dir / "toy-42.key")


def test_device_key_is_0600(device_files: tuple[Path, Path]) -> None:
    assert file_mode(device_files[1]) == 0o600


def test_device_cert_has_san_uri(device_files: tuple[Path, Path]) -> None:
    san = extension(load_cert(device_files[0]), x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("urn:petvault:device:toy-42")]


def test_device_cert_has_cn(device_files: tuple[Path, Path]) -> None:
    assert common_names(load_cert(device_files[0])) == ["toy-42"]


def test_device_cert_eku_is_client_auth_only(device_files: tuple[Path, Path]) -> None:
    eku = extension(load_cert(device_files[0]), x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_device_cert_is_not_a_ca(device_files: tuple[Path, Path]) -> None:
    cert = load_cert(device_files[0])
    constraints = extension(cert, x509.BasicConstraints)
    usage = extension(cert, x509.KeyUsage).value
    assert constraints.critical
    assert not constraints.value.ca
    assert usage.digital_signature
    assert not usage.key_cert_sign
    assert not usage.crl_sign


def test_device_cert_has_aki_and_ski(device_files: tuple[Path, Path]) -> None:
    cert = load_cert(device_files[0])
    assert extension(cert, x509.AuthorityKeyIdentifier).value.key_identifier
    assert extension(cert, x509.SubjectKeyIdentifier).value.digest


def test_device_cert_chains_to_device_ca(pki: PkiLayout, device_files: tuple[Path, Path]) -> None:
    cert = load_cert(device_files[0])
    ca_public_key = load_cert(pki.device_ca_cert).public_key()
    assert isinstance(ca_public_key, ec.EllipticCurvePublicKey)
    assert cert.signature_hash_algorithm is not None

    # Raises InvalidSignature if the device CA did not sign the certificate.
    ca_public_key.verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        ec.ECDSA(cert.signature_hash_algorithm),
    )


def test_device_cert_not_signed_by_operator_ca(
    pki: PkiLayout, device_files: tuple[Path, Path]
) -> None:
    assert not issued_by(load_cert(device_files[0]), load_cert(pki.operator_ca_cert))


def test_device_cert_matches_its_key(device_files: tuple[Path, Path]) -> None:
    cert_path, key_path = device_files
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert key.public_key() == load_cert(cert_path).public_key()


def test_device_cert_validity_days(pki: PkiLayout) -> None:
    # X.509 times have whole seconds, so the issue time is truncated to match.
    before = utc_now().replace(microsecond=0)
    cert_path, _ = issue_device_certificate(pki.directory, "toy-7", validity_days=30)
    cert = load_cert(cert_path)
    assert cert.not_valid_after_utc - before >= datetime.timedelta(days=30)
    assert cert.not_valid_after_utc - before < datetime.timedelta(days=30, minutes=1)
    assert before - cert.not_valid_before_utc <= CLOCK_SKEW_ALLOWANCE


def test_device_serials_are_random(pki: PkiLayout) -> None:
    first, _ = issue_device_certificate(pki.directory, "toy-1")
    second, _ = issue_device_certificate(pki.directory, "toy-2")
    assert load_cert(first).serial_number != load_cert(second).serial_number
    assert load_cert(first).serial_number.bit_length() > 64


def test_issue_device_rejects_existing(pki: PkiLayout, device_files: tuple[Path, Path]) -> None:
    old = device_files[0].read_bytes()
    with pytest.raises(OutputFileExistsError, match="toy-42"):
        issue_device_certificate(pki.directory, "toy-42")
    assert device_files[0].read_bytes() == old


def test_issue_device_force_replaces(pki: PkiLayout, device_files: tuple[Path, Path]) -> None:
    old = device_files[0].read_bytes()
    issue_device_certificate(pki.directory, "toy-42", force=True)
    assert device_files[0].read_bytes() != old
    assert file_mode(device_files[1]) == 0o600


def test_issue_device_without_ca(tmp_path: Path) -> None:
    with pytest.raises(CertificateAuthorityError, match="not found"):
        issue_device_certificate(tmp_path, "toy-42")


@pytest.mark.parametrize("days", [0, -1])
def test_issue_device_rejects_nonpositive_days(pki: PkiLayout, days: int) -> None:
    with pytest.raises(ValidityError, match="at least 1 day"):
        issue_device_certificate(pki.directory, "toy-42", validity_days=days)


def test_issue_device_rejects_days_beyond_ca(pki: PkiLayout) -> None:
    with pytest.raises(ValidityError, match="outlive CA"):
        issue_device_certificate(pki.directory, "toy-42", validity_days=20 * 365)


@pytest.mark.parametrize("device_id", ["", "../escape", "a/b", "toy 1"])
def test_issue_device_rejects_invalid_id(pki: PkiLayout, device_id: str) -> None:
    with pytest.raises(InvalidNameError):
        issue_device_certificate(pki.directory, device_id)
    assert not pki.devices_dir.exists()


def test_issue_device_cli_invalid_id_one_line(
    pki: PkiLayout, capsys: pytest.CaptureFixture[str]
) -> None:
    code = cli.main(["certs", "issue-device", "../x", "--dir", str(pki.directory)])

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "'../x'" in err
    assert DEVICE_ID_RULE in err
    assert "Traceback" not in err


def test_issue_device_cli_writes_files(pki: PkiLayout) -> None:
    code = cli.main(["certs", "issue-device", "toy-9", "--dir", str(pki.directory)])
    assert code == 0
    assert pki.device_cert("toy-9").is_file()
    assert file_mode(pki.device_key("toy-9")) == 0o600


# --- operator certificates --------------------------------------------------------


@pytest.fixture
def operator_cert(pki: PkiLayout) -> x509.Certificate:
    cert_path, _ = issue_operator_certificate(pki.directory, "alice")
    return load_cert(cert_path)


def test_operator_cert_paths(pki: PkiLayout) -> None:
    paths = issue_operator_certificate(pki.directory, "bob")
    assert paths == (pki.operators_dir / "bob.pem", pki.operators_dir / "bob.key")
    assert file_mode(paths[1]) == 0o600


def test_operator_cert_has_san_uri(operator_cert: x509.Certificate) -> None:
    san = extension(operator_cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("urn:petvault:operator:alice")]


def test_operator_cert_has_cn(operator_cert: x509.Certificate) -> None:
    assert common_names(operator_cert) == ["alice"]


def test_operator_cert_eku_is_client_auth_only(operator_cert: x509.Certificate) -> None:
    eku = extension(operator_cert, x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_operator_cert_chains_to_operator_ca(
    pki: PkiLayout, operator_cert: x509.Certificate
) -> None:
    assert issued_by(operator_cert, load_cert(pki.operator_ca_cert))
    assert not issued_by(operator_cert, load_cert(pki.device_ca_cert))


def test_issue_operator_rejects_invalid_name(pki: PkiLayout) -> None:
    with pytest.raises(InvalidNameError, match="operator name"):
        issue_operator_certificate(pki.directory, "alice smith")


def test_issue_operator_cli(pki: PkiLayout) -> None:
    code = cli.main(["certs", "issue-operator", "carol", "--dir", str(pki.directory)])
    assert code == 0
    assert pki.operator_cert("carol").is_file()


# --- device id rule -----------------------------------------------------------------

VALID_DEVICE_IDS = [
    "a",
    "toy-42",
    "Kitchen.Cam_2",
    "0",
    "x" * 64,
    "-leading-dash",
    "...",
    ".hidden",
    "toy..1",
]

INVALID_DEVICE_IDS = [
    pytest.param("", id="empty"),
    pytest.param("x" * 65, id="65-chars"),
    pytest.param("toy 42", id="space"),
    pytest.param("toy/42", id="slash"),
    pytest.param("toy\\42", id="backslash"),
    pytest.param("../etc/passwd", id="traversal"),
    pytest.param("toy\x00", id="nul"),
    pytest.param("toy-42\n", id="trailing-newline"),
    pytest.param("toy\t42", id="tab"),
    pytest.param("tøy", id="latin-unicode"),
    pytest.param("toy\u0661", id="arabic-digit"),
    pytest.param("toy\u202e24", id="bidi-override"),
    pytest.param("ｔｏｙ", id="fullwidth"),
    pytest.param("toy:42", id="colon"),
    pytest.param("toy@home", id="at-sign"),
    pytest.param("toy%2F42", id="percent"),
    pytest.param("toy\x1b[31m", id="ansi-escape"),
    # HTTP clients remove these dot segments from a URL path, so the admin API could
    # never reach a device with such an id.
    pytest.param(".", id="dot"),
    pytest.param("..", id="dot-dot"),
]


@pytest.mark.parametrize("device_id", VALID_DEVICE_IDS)
def test_device_id_valid(device_id: str) -> None:
    assert validate_device_id(device_id) == device_id


@pytest.mark.parametrize("device_id", INVALID_DEVICE_IDS)
def test_device_id_invalid(device_id: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_device_id(device_id)


@pytest.mark.parametrize("name", INVALID_DEVICE_IDS)
def test_operator_name_invalid(name: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_operator_name(name)


def test_device_id_error_names_rule_and_value() -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_device_id("toy 42")
    message = str(caught.value)
    assert DEVICE_ID_RULE in message
    assert "'toy 42'" in message


def test_device_id_error_truncates_long_value() -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_device_id("y" * 10_000)
    message = str(caught.value)
    assert len(message) < 200
    assert "10000 characters" in message


def test_device_id_error_escapes_control_characters() -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_device_id("toy\n\x1b[2J")
    assert "\n" not in str(caught.value)
    assert "\x1b" not in str(caught.value)


def test_device_id_rule_names_dot_segments() -> None:
    assert "other than '.' and '..'" in DEVICE_ID_RULE


@pytest.mark.parametrize("device_id", ["toy 42", "..", "SECRET<script>", 42])
def test_device_id_rule_message_omits_value(device_id: object) -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_device_id(device_id)  # type: ignore[arg-type]
    assert caught.value.rule_message == f"device id must be {DEVICE_ID_RULE}"


def test_operator_name_rule_message() -> None:
    with pytest.raises(InvalidNameError) as caught:
        validate_operator_name("..")
    assert caught.value.rule_message == f"operator name must be {DEVICE_ID_RULE}"


def test_device_id_rejects_non_string() -> None:
    with pytest.raises(InvalidNameError, match="expected a string"):
        validate_device_id(42)  # type: ignore[arg-type]


def test_layout_paths_validate_id(pki: PkiLayout) -> None:
    with pytest.raises(InvalidNameError):
        pki.device_cert("../../server")


# --- file writing ----------------------------------------------------------------


def test_write_private_key_0600_despite_umask(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    old_umask = os.umask(0)
    try:
        write_private_key(path, ec.generate_private_key(ec.SECP256R1()), force=False)
    finally:
        os.umask(old_umask)
    assert file_mode(path) == 0o600


def test_write_private_key_force_keeps_0600(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_text("old")
    path.chmod(0o644)

    write_private_key(path, ec.generate_private_key(ec.SECP256R1()), force=True)

    assert file_mode(path) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")


def test_write_private_key_rejects_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    link = tmp_path / "k.key"
    link.symlink_to(target)

    with pytest.raises(OutputFileExistsError):
        write_private_key(link, ec.generate_private_key(ec.SECP256R1()), force=False)

    assert not target.exists()


def test_write_private_key_force_replaces_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("untouched")
    link = tmp_path / "k.key"
    link.symlink_to(target)

    write_private_key(link, ec.generate_private_key(ec.SECP256R1()), force=True)

    assert not link.is_symlink()
    assert target.read_text() == "untouched"


def test_write_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    write_private_key(path, ec.generate_private_key(ec.SECP256R1()), force=False)
    write_private_key(path, ec.generate_private_key(ec.SECP256R1()), force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["k.key"]


# --- sign-csr ----------------------------------------------------------------------


def test_sign_csr_issues_device_cert(device_ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())

    cert = sign_device_csr(make_csr(key), "toy-42", device_ca)

    assert cert.public_key() == key.public_key()
    assert common_names(cert) == ["toy-42"]
    assert issued_by(cert, device_ca.certificate)


@pytest.mark.parametrize(
    "make_key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="p256"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p384"),
        pytest.param(lambda: rsa.generate_private_key(65537, 2048), id="rsa2048"),
    ],
)
def test_sign_csr_accepts_key(
    device_ca: CertificateAuthority, make_key: Callable[[], CertificateIssuerPrivateKeyTypes]
) -> None:
    key = make_key()
    cert = sign_device_csr(make_csr(key), "toy-42", device_ca)
    assert cert.public_key() == key.public_key()


def test_sign_csr_ignores_csr_subject_and_extensions(device_ca: CertificateAuthority) -> None:
    hostile_extensions: list[x509.ExtensionType] = [
        x509.BasicConstraints(ca=True, path_length=None),
        x509.SubjectAlternativeName(
            [
                x509.UniformResourceIdentifier("urn:petvault:device:someone-else"),
                x509.DNSName("localhost"),
            ]
        ),
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
    ]
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "admin", extensions=hostile_extensions)

    cert = sign_device_csr(csr, "toy-42", device_ca)

    san = extension(cert, x509.SubjectAlternativeName).value
    assert common_names(cert) == ["toy-42"]
    assert list(san) == [x509.UniformResourceIdentifier("urn:petvault:device:toy-42")]
    assert not extension(cert, x509.BasicConstraints).value.ca
    assert list(extension(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_sign_csr_rejects_invalid_device_id(device_ca: CertificateAuthority) -> None:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(InvalidNameError):
        sign_device_csr(csr, "toy/42", device_ca)


def tampered_csr() -> bytes:
    """A P-256 CSR whose subject was changed after signing."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = make_csr(key, common_name="tamper-me")
    der = x509.load_pem_x509_csr(pem).public_bytes(serialization.Encoding.DER)
    return pem_wrap(der.replace(b"tamper-me", b"tamper-mE"), "CERTIFICATE REQUEST")


def certificate_pem(device_ca: CertificateAuthority) -> bytes:
    return leaf(device_ca, NOW, NOW + DAY).public_bytes(serialization.Encoding.PEM)


REJECTED_CSRS = [
    pytest.param(
        lambda ca: tampered_csr(),
        "CSR signature is invalid",
        id="bad-signature",
    ),
    pytest.param(
        lambda ca: make_csr(weak_rsa_key()),
        "RSA key of 1024 bits is too weak; use RSA >= 2048 or ECDSA P-256/P-384",
        id="rsa-1024",
    ),
    pytest.param(
        lambda ca: make_csr(ec.generate_private_key(ec.SECP192R1())),
        "ECDSA curve secp192r1 is not accepted",
        id="p192",
    ),
    pytest.param(
        lambda ca: make_csr(ec.generate_private_key(ec.SECP521R1())),
        "ECDSA curve secp521r1 is not accepted",
        id="p521",
    ),
    pytest.param(
        lambda ca: make_csr(ed25519.Ed25519PrivateKey.generate()),
        "Ed25519 keys are not accepted",
        id="ed25519",
    ),
    pytest.param(lambda ca: b"garbage", "not a valid PEM", id="garbage"),
    pytest.param(lambda ca: b"", "not a valid PEM", id="empty"),
    pytest.param(
        lambda ca: pem_wrap(b"\x30\x03\x02\x01\x00", "CERTIFICATE REQUEST"),
        "not a valid PEM",
        id="truncated-der",
    ),
    pytest.param(certificate_pem, "not a valid PEM", id="certificate-not-csr"),
    pytest.param(lambda ca: b"A" * (65 * 1024), "more than the maximum", id="oversized"),
]


@pytest.mark.parametrize(("make_input", "reason"), REJECTED_CSRS)
def test_sign_csr_rejects(
    device_ca: CertificateAuthority,
    make_input: Callable[[CertificateAuthority], bytes],
    reason: str,
) -> None:
    csr_pem = make_input(device_ca)
    with pytest.raises(CsrRejectedError, match=re.escape(reason)):
        sign_device_csr(csr_pem, "toy-42", device_ca)


def test_sign_csr_cli_default_output(
    pki: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csr_path = tmp_path / "toy.csr"
    csr_path.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))

    code = cli.main(
        ["certs", "sign-csr", str(csr_path), "--device-id", "toy-5", "--dir", str(pki.directory)]
    )

    assert code == 0
    assert common_names(load_cert(pki.device_cert("toy-5"))) == ["toy-5"]
    assert not pki.device_key("toy-5").exists()


def test_sign_csr_cli_out_option(pki: PkiLayout, tmp_path: Path) -> None:
    csr_path = tmp_path / "toy.csr"
    csr_path.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    out = tmp_path / "issued.pem"

    code = cli.main(
        [
            "certs",
            "sign-csr",
            str(csr_path),
            "--device-id",
            "toy-5",
            "--dir",
            str(pki.directory),
            "--out",
            str(out),
            "--days",
            "7",
        ]
    )

    cert = load_cert(out)
    assert code == 0
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < datetime.timedelta(days=8)


def test_sign_csr_cli_rejection_one_line(
    pki: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csr_path = tmp_path / "weak.csr"
    csr_path.write_bytes(make_csr(weak_rsa_key()))

    code = cli.main(
        ["certs", "sign-csr", str(csr_path), "--device-id", "toy-5", "--dir", str(pki.directory)]
    )

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "RSA key of 1024 bits is too weak" in err
    assert not pki.device_cert("toy-5").exists()


def test_sign_csr_cli_missing_csr(
    pki: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.csr"

    code = cli.main(
        ["certs", "sign-csr", str(missing), "--device-id", "toy-5", "--dir", str(pki.directory)]
    )

    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert str(missing) in err


def test_sign_csr_cli_rejects_existing_output(
    pki: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    issue_device_certificate(pki.directory, "toy-5")
    csr_path = tmp_path / "toy.csr"
    csr_path.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))

    code = cli.main(
        ["certs", "sign-csr", str(csr_path), "--device-id", "toy-5", "--dir", str(pki.directory)]
    )

    assert code == 1
    assert "--force" in capsys.readouterr().err


# --- inspect: pure function -------------------------------------------------------


def test_check_expired(device_ca: CertificateAuthority) -> None:
    status = check_certificate(leaf(device_ca, NOW - 10 * DAY, NOW - DAY), now=NOW)
    assert status.validity is Validity.EXPIRED
    assert status.flag == "EXPIRED"
    assert status.is_invalid


def test_check_not_yet_valid(device_ca: CertificateAuthority) -> None:
    status = check_certificate(leaf(device_ca, NOW + DAY, NOW + 400 * DAY), now=NOW)
    assert status.flag == "NOT YET VALID"
    assert status.is_invalid


def test_check_expires_in_days(device_ca: CertificateAuthority) -> None:
    cert = leaf(device_ca, NOW - DAY, NOW + 10 * DAY + datetime.timedelta(hours=1))
    status = check_certificate(cert, now=NOW)
    assert status.flag == "EXPIRES IN 10 DAYS"
    assert not status.is_invalid


def test_check_expires_in_one_day(device_ca: CertificateAuthority) -> None:
    cert = leaf(device_ca, NOW - DAY, NOW + DAY + datetime.timedelta(hours=1))
    assert check_certificate(cert, now=NOW).flag == "EXPIRES IN 1 DAY"


def test_check_valid_beyond_threshold(device_ca: CertificateAuthority) -> None:
    status = check_certificate(leaf(device_ca, NOW - DAY, NOW + 31 * DAY), now=NOW)
    assert status.flag == "OK"


def test_check_warn_days_threshold(device_ca: CertificateAuthority) -> None:
    cert = leaf(device_ca, NOW - DAY, NOW + 31 * DAY)
    assert check_certificate(cert, now=NOW, warn_days=60).flag == "EXPIRES IN 31 DAYS"


def test_check_warn_days_zero_disables(device_ca: CertificateAuthority) -> None:
    cert = leaf(device_ca, NOW - DAY, NOW + datetime.timedelta(hours=1))
    assert check_certificate(cert, now=NOW, warn_days=0).flag == "OK"


def test_check_not_after_is_inclusive(device_ca: CertificateAuthority) -> None:
    status = check_certificate(leaf(device_ca, NOW - DAY, NOW), now=NOW)
    assert not status.is_invalid


def test_check_not_before_is_inclusive(device_ca: CertificateAuthority) -> None:
    status = check_certificate(leaf(device_ca, NOW, NOW + 100 * DAY), now=NOW)
    assert status.flag == "OK"


def test_check_reports_names_and_serial(device_ca: CertificateAuthority) -> None:
    cert = leaf(device_ca, NOW - DAY, NOW + 100 * DAY)
    status = check_certificate(cert, now=NOW)
    assert status.subject == "toy-1"
    assert status.issuer == "petvault development device CA"
    assert status.serial == f"{cert.serial_number:x}"
    assert status.not_after == cert.not_valid_after_utc


def test_display_name_without_cn() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Acme"),
        ]
    )
    assert display_name(name) == "O=Acme,C=DE"


def test_display_name_empty() -> None:
    assert display_name(x509.Name([])) == "(empty)"


def test_display_name_two_cns_shows_all() -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "toy-1"),
            x509.NameAttribute(NameOID.COMMON_NAME, "toy-2"),
        ]
    )
    assert display_name(name) == "CN=toy-2,CN=toy-1"


HOSTILE_COMMON_NAMES = [
    pytest.param("toy\nsubject     forged", id="newline"),
    pytest.param("toy\x1b[2J\x1b[31m", id="ansi-escape"),
    pytest.param("toy\r", id="carriage-return"),
    pytest.param("toy\u202egnp.exe", id="bidi-override"),
    pytest.param("toy\x00", id="nul"),
]


@pytest.mark.parametrize("common_name", HOSTILE_COMMON_NAMES)
def test_display_name_escapes_control_characters(common_name: str) -> None:
    displayed = display_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
    assert displayed.isprintable()
    assert displayed.startswith("toy")


# cryptography warns about a CN over 64 characters, which is the point here.
@pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning")
def test_display_name_truncates_long_cn(device_ca: CertificateAuthority) -> None:
    attribute = x509.NameAttribute(NameOID.COMMON_NAME, "z" * 5000, _validate=False)
    cert = leaf(device_ca, NOW - DAY, NOW + DAY, subject=x509.Name([attribute]))
    displayed = check_certificate(cert, now=NOW).subject
    assert len(displayed) < 300
    assert "5000 characters" in displayed


# --- inspect: CLI ----------------------------------------------------------------


def inspect(args: list[str]) -> int:
    return cli.main(["certs", "inspect", *args])


def test_inspect_exit_0_for_valid(pki: PkiLayout, capsys: pytest.CaptureFixture[str]) -> None:
    code = inspect([str(pki.server_cert), str(pki.device_ca_cert)])

    out = capsys.readouterr().out
    assert code == 0
    assert "localhost" in out
    assert "petvault development server CA" in out
    assert out.count("status      OK") == 2


def test_inspect_exit_1_for_expired(
    device_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    path = write_pem(tmp_path / "old.pem", leaf(device_ca, now - 10 * DAY, now - DAY))

    code = inspect([str(path)])

    assert code == 1
    assert "EXPIRED" in capsys.readouterr().out


def test_inspect_exit_1_for_not_yet_valid(
    device_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    path = write_pem(tmp_path / "future.pem", leaf(device_ca, now + DAY, now + 10 * DAY))

    code = inspect([str(path)])

    assert code == 1
    assert "NOT YET VALID" in capsys.readouterr().out


def test_inspect_exit_0_for_expiring(
    device_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    cert = leaf(device_ca, now - DAY, now + 5 * DAY + datetime.timedelta(hours=1))
    path = write_pem(tmp_path / "soon.pem", cert)

    code = inspect([str(path)])

    assert code == 0
    assert "EXPIRES IN 5 DAYS" in capsys.readouterr().out


def test_inspect_warn_days_option(
    device_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    cert = leaf(device_ca, now - DAY, now + 5 * DAY + datetime.timedelta(hours=1))
    path = write_pem(tmp_path / "soon.pem", cert)

    inspect(["--warn-days", "3", str(path)])

    assert "status      OK" in capsys.readouterr().out


def test_inspect_lists_every_cert_in_bundle(
    pki: PkiLayout,
    device_ca: CertificateAuthority,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = utc_now()
    bundle = write_pem(
        tmp_path / "bundle.pem",
        load_cert(pki.server_cert),
        leaf(device_ca, now - 10 * DAY, now - DAY),
        load_cert(pki.device_ca_cert),
    )

    code = inspect([str(bundle)])

    out = capsys.readouterr().out
    assert code == 1
    assert out.count("[certificate ") == 3
    assert "[certificate 3 of 3]" in out


def test_inspect_exit_2_for_missing_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pem"

    code = inspect([str(missing)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert str(missing) in err


def test_inspect_exit_2_for_non_pem(
    pki: PkiLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = inspect([str(pki.server_key)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "no PEM certificate" in err


def test_inspect_exit_2_for_malformed_pem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(pem_wrap(b"\x30\x03\x02\x01\x00", "CERTIFICATE"))

    code = inspect([str(path)])

    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "malformed" in err


def test_inspect_exit_2_for_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = inspect([str(tmp_path)])
    assert code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_inspect_file_error_wins_over_expired(
    device_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    expired = write_pem(tmp_path / "old.pem", leaf(device_ca, now - 10 * DAY, now - DAY))

    code = inspect([str(expired), str(tmp_path / "missing.pem")])

    assert code == 2
    assert "EXPIRED" in capsys.readouterr().out  # the readable file is still listed


def test_inspect_hostile_subject_stays_on_one_line(
    device_ca: CertificateAuthority, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    now = utc_now()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "toy\n  status      OK")])
    path = write_pem(tmp_path / "evil.pem", leaf(device_ca, now - 10 * DAY, now - DAY, subject))

    inspect([str(path)])

    out = capsys.readouterr().out
    assert out.count("\n") == 7  # header plus six labelled lines
    assert "status      OK" not in out.splitlines()[-1]


def test_inspect_rejects_negative_warn_days(pki: PkiLayout) -> None:
    with pytest.raises(SystemExit) as caught:
        inspect(["--warn-days", "-1", str(pki.server_cert)])
    assert caught.value.code == 2


CLI_NUMBER_ERRORS = [
    pytest.param(["inspect", "--warn-days", "abc", "x.pem"],
                 "argument --warn-days: must be a whole number, 0 or more, got 'abc'",
                 id="warn-days not a number"),
    pytest.param(["inspect", "--warn-days", "-1", "x.pem"],
                 "argument --warn-days: must be a whole number, 0 or more, got '-1'",
                 id="warn-days negative"),
    pytest.param(["issue-device", "toy-1", "--days", "abc"],
                 "argument --days: must be a whole number, 1 or more, got 'abc'",
                 id="days not a number"),
    pytest.param(["issue-operator", "alice", "--days", "0"],
                 "argument --days: must be a whole number, 1 or more, got '0'",
                 id="days zero"),
]


@pytest.mark.parametrize(("arguments", "message"), CLI_NUMBER_ERRORS)
def test_cli_number_error_states_rule(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        cli.main(["certs", *arguments])

    last_line = capsys.readouterr().err.splitlines()[-1]
    assert caught.value.code == 2
    assert last_line.endswith(message)
    assert "_int" not in last_line


# --- mutual TLS on loopback ----------------------------------------------------------


@pytest.fixture
def tls_server(pki: PkiLayout) -> Iterator[tuple[int, list[str]]]:
    """A one-connection TLS server on 127.0.0.1 that requires a device certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    context.load_verify_locations(pki.device_ca_cert)
    context.verify_mode = ssl.CERT_REQUIRED

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    peer_subjects: list[str] = []

    def serve() -> None:
        try:
            connection, _ = listener.accept()
            with context.wrap_socket(connection, server_side=True) as tls:
                peer = tls.getpeercert()
                if peer:
                    peer_subjects.append(str(peer["subject"]))
                tls.sendall(b"ok")
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], peer_subjects
    listener.close()
    thread.join(timeout=10)


def test_mutual_tls_with_device_cert(
    pki: PkiLayout, device_files: tuple[Path, Path], tls_server: tuple[int, list[str]]
) -> None:
    port, peer_subjects = tls_server
    context = ssl.create_default_context(cafile=str(pki.server_ca_cert))
    context.load_cert_chain(*device_files)

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(2) == b"ok"

    assert "toy-42" in peer_subjects[0]


def test_device_rejects_server_from_other_ca(
    pki: PkiLayout, device_files: tuple[Path, Path], tls_server: tuple[int, list[str]]
) -> None:
    port, _ = tls_server
    context = ssl.create_default_context(cafile=str(pki.device_ca_cert))
    context.load_cert_chain(*device_files)

    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname="localhost")


def test_create_dev_ca_starts_before_now() -> None:
    ca = create_dev_ca("test CA", now=NOW)
    assert ca.certificate.not_valid_before_utc == NOW - CLOCK_SKEW_ALLOWANCE
