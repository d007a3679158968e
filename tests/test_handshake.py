"""Device listener handshake and certificate identity, over real TLS on loopback.

Clients without a valid certificate from the device CA fail the TLS handshake and
never reach the application. Certificates from the device CA that are unregistered,
or whose names are hostile, get a 401 JSON error and never a 500.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from certs.authority import CertificateAuthority
from certs.pki import PkiLayout, init_dev_pki, issue_device_certificate, load_certificate_authority
from service.embedded import EmbeddedS3
from tests.certificates import ClientCredentials, common_name, device_uri, issue_client_certificate
from tests.clients import client_context, device_context, handshake_outcome
from tests.harness import RunningServer, ServerLoop, make_settings

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    """One server for this module. Every test presents a certificate of its own."""
    running = server_loop.start_server(make_settings(pki.directory, s3))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def device_ca(pki: PkiLayout) -> CertificateAuthority:
    return load_certificate_authority(pki.device_ca_cert, pki.device_ca_key)


@pytest.fixture(scope="module")
def credentials_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-certificates")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PkiLayout:
    """A second development PKI: its device CA is not the server's."""
    directory = tmp_path_factory.mktemp("other-pki")
    layout = init_dev_pki(directory)
    issue_device_certificate(directory, "toy-1")
    return layout


def _context_for(credentials: ClientCredentials, pki: PkiLayout) -> ssl.SSLContext:
    return client_context(credentials.cert_path, credentials.key_path, pki.server_ca_cert)


def _register(server: RunningServer, credentials: ClientCredentials, device_id: str) -> None:
    server.loop.run(
        server.runtime.store.register_device_certificate(
            device_id=device_id,
            household_id="household-demo",
            fingerprint=credentials.fingerprint,
            serial=credentials.serial,
            not_after=credentials.not_after,
            now=NOW,
        )
    )


# --- clients that must fail the handshake -------------------------------------------


def _no_certificate(pki: PkiLayout, other: PkiLayout, ca: CertificateAuthority,
                    directory: Path) -> ssl.SSLContext:
    return client_context(None, None, pki.server_ca_cert)


def _other_ca(pki: PkiLayout, other: PkiLayout, ca: CertificateAuthority,
              directory: Path) -> ssl.SSLContext:
    # Same device id as a registered device, but signed by another device CA.
    return client_context(other.device_cert("toy-1"), other.device_key("toy-1"), pki.server_ca_cert)


def _expired(pki: PkiLayout, other: PkiLayout, ca: CertificateAuthority,
             directory: Path) -> ssl.SSLContext:
    credentials = issue_client_certificate(
        ca, directory, "expired", subject=[common_name("toy-1")], san=[device_uri("toy-1")],
        not_before=NOW - 10 * DAY, not_after=NOW - DAY,
    )
    return _context_for(credentials, pki)


def _not_yet_valid(pki: PkiLayout, other: PkiLayout, ca: CertificateAuthority,
                   directory: Path) -> ssl.SSLContext:
    credentials = issue_client_certificate(
        ca, directory, "not-yet-valid", subject=[common_name("toy-1")], san=[device_uri("toy-1")],
        not_before=NOW + DAY, not_after=NOW + 10 * DAY,
    )
    return _context_for(credentials, pki)


ContextFactory = Callable[[PkiLayout, PkiLayout, CertificateAuthority, Path], ssl.SSLContext]


@pytest.mark.parametrize(
    "make_context",
    [
        pytest.param(_no_certificate, id="no client certificate"),
        pytest.param(_other_ca, id="certificate from another CA"),
        pytest.param(_expired, id="expired certificate"),
        pytest.param(_not_yet_valid, id="not yet valid certificate"),
    ],
)
def test_handshake_rejects_invalid_client(
    make_context: ContextFactory,
    pki: PkiLayout,
    other_pki: PkiLayout,
    device_ca: CertificateAuthority,
    credentials_dir: Path,
    server: RunningServer,
) -> None:
    context = make_context(pki, other_pki, device_ca, credentials_dir)
    lookups_before = server.runtime.identity.database_lookups

    outcome = handshake_outcome(context, server.port)

    assert outcome == "handshake rejected"
    # The app looks up every certificate that reaches it, so no lookup means none did.
    assert server.runtime.identity.database_lookups == lookups_before


# --- TLS versions --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls11_client_rejected(pki: PkiLayout, server: RunningServer) -> None:
    context = device_context(pki, "toy-1")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    # OpenSSL 3 offers TLS 1.1 only at security level 0. Without it, the client would
    # fail on its own, and the test would prove nothing about the server.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")

    assert handshake_outcome(context, server.port) == "handshake rejected"


def test_tls12_client_accepted(pki: PkiLayout, server: RunningServer) -> None:
    context = device_context(pki, "toy-1")
    context.maximum_version = ssl.TLSVersion.TLSv1_2

    assert handshake_outcome(context, server.port) == "200"


# --- certificates from the device CA that are not a registered device ---------------


def test_unregistered_certificate_gets_401(
    pki: PkiLayout, device_ca: CertificateAuthority, credentials_dir: Path, server: RunningServer
) -> None:
    credentials = issue_client_certificate(
        device_ca, credentials_dir, "toy-9",
        subject=[common_name("toy-9")], san=[device_uri("toy-9")],
    )

    outcome = handshake_outcome(_context_for(credentials, pki), server.port)

    assert outcome == "401 certificate_not_registered"


def _string(value: str, string_type: _ASN1Type) -> x509.NameAttribute:
    return x509.NameAttribute(NameOID.COMMON_NAME, value, _type=string_type)


# Each case: subject attributes, SAN entries, and bytes to patch after building.
HOSTILE_CERTIFICATES = [
    pytest.param([], [device_uri("toy-1")], None, id="no CN"),
    pytest.param([common_name("toy-1"), common_name("toy-2")], [device_uri("toy-1")], None,
                 id="two CNs"),
    pytest.param([common_name("tøy-1")], [device_uri("toy-1")], None, id="non-ASCII CN"),
    pytest.param([common_name("toy-2")], [device_uri("toy-1")], None, id="CN differs from SAN"),
    pytest.param([common_name("toy-1")], [], None, id="no SAN"),
    pytest.param([common_name("toy-1")], [device_uri("toy-1"), device_uri("toy-2")], None,
                 id="two device SAN URIs"),
    pytest.param([common_name("../toy-1")], [device_uri("../toy-1")], None,
                 id="device id breaks the naming rule"),
    # Wrongly encoded strings, patched in after signing. OpenSSL accepts these three,
    # so they reach the service. OpenSSL rejects invalid UTF8String bytes when it loads
    # a certificate, so test_identity covers those in the parser alone.
    # '@' and '*' are outside the PrintableString alphabet (X.680).
    pytest.param([_string("toyAB1", _ASN1Type.PrintableString)], [device_uri("toy-1")],
                 (b"toyAB1", b"toy@*1"), id="invalid PrintableString"),
    pytest.param([_string("toyAB1", _ASN1Type.IA5String)], [device_uri("toy-1")],
                 (b"toyAB1", b"toy\xff\xfe1"), id="8-bit IA5String"),
    pytest.param([_string("toyAB1", _ASN1Type.T61String)], [device_uri("toy-1")],
                 (b"toyAB1", b"toy\xff\xfe1"), id="8-bit TeletexString"),
    pytest.param([common_name("toy-1")] + [common_name(f"x{index}") for index in range(400)],
                 [device_uri("toy-1")], None, id="400 subject attributes"),
]

# A certificate that the service cannot tie to one device id: rejected, never a 500.
REJECTED = {
    "handshake rejected",
    "401 certificate_not_registered",
    "401 invalid_certificate",
    "401 certificate_identity_mismatch",
}


@pytest.mark.parametrize(("subject", "san", "replace"), HOSTILE_CERTIFICATES)
def test_hostile_unregistered_certificate_rejected(
    subject: list[x509.NameAttribute],
    san: list[x509.GeneralName],
    replace: tuple[bytes, bytes] | None,
    pki: PkiLayout,
    device_ca: CertificateAuthority,
    credentials_dir: Path,
    server: RunningServer,
) -> None:
    credentials = issue_client_certificate(
        device_ca, credentials_dir, "hostile", subject=subject, san=san, replace=replace
    )

    outcome = handshake_outcome(_context_for(credentials, pki), server.port)

    assert outcome in REJECTED - {"401 certificate_identity_mismatch"}


@pytest.mark.parametrize(("subject", "san", "replace"), HOSTILE_CERTIFICATES)
def test_hostile_registered_certificate_rejected(
    subject: list[x509.NameAttribute],
    san: list[x509.GeneralName],
    replace: tuple[bytes, bytes] | None,
    pki: PkiLayout,
    device_ca: CertificateAuthority,
    credentials_dir: Path,
    server: RunningServer,
) -> None:
    credentials = issue_client_certificate(
        device_ca, credentials_dir, "hostile", subject=subject, san=san, replace=replace
    )
    _register(server, credentials, "toy-1")

    outcome = handshake_outcome(_context_for(credentials, pki), server.port)

    assert outcome in REJECTED - {"401 certificate_not_registered"}


def test_certificate_registered_to_other_device_gets_401(
    pki: PkiLayout, device_ca: CertificateAuthority, credentials_dir: Path, server: RunningServer
) -> None:
    # A well-formed certificate for toy-2, registered under toy-1's device record.
    credentials = issue_client_certificate(
        device_ca, credentials_dir, "toy-2-as-toy-1",
        subject=[common_name("toy-2")], san=[device_uri("toy-2")],
    )
    _register(server, credentials, "toy-1")

    outcome = handshake_outcome(_context_for(credentials, pki), server.port)

    assert outcome == "401 certificate_identity_mismatch"
