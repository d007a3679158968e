"""Service settings from `PETVAULT_*` environment variables, and the production checks.

`Settings` is the one place where every knob lives. `production_problems` lists each
insecure setting that production mode rejects, so `petvault serve` can print them all
at once instead of failing on the first.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# URIs that select the in-process MongoDB-API stand-in instead of a real server.
EMBEDDED_MONGODB_URI = "embedded://"

DEFAULT_CONTENT_TYPES = ("audio/wav", "audio/ogg", "audio/mpeg", "audio/mp4")
MAX_DOWNLOAD_TTL_SECONDS = 900


class Settings(BaseSettings):
    """All petvault settings. Each field reads `PETVAULT_<FIELD>` from the environment."""

    model_config = SettingsConfigDict(env_prefix="PETVAULT_", env_file=".env", extra="ignore")

    env: Literal["development", "production"] = "development"

    # Device listener (public, mutual TLS against the device CA).
    host: str = "127.0.0.1"
    port: int = Field(default=8443, ge=0, le=65535)
    # Admin listener (mutual TLS against the operator CA); loopback unless configured.
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(default=8444, ge=0, le=65535)
    # Plain-HTTP health endpoint for container probes; always bound to loopback.
    health_port: int = Field(default=8080, ge=0, le=65535)

    # TLS material. Relative paths resolve against the working directory.
    certs_dir: Path = Path("certs/dev")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    device_ca: Path | None = None
    device_ca_key: Path | None = None
    operator_ca: Path | None = None

    mongodb_uri: str = EMBEDDED_MONGODB_URI
    mongodb_database: str = "petvault"
    mongodb_timeout_ms: int = Field(default=5000, ge=100)

    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_endpoint_url: str | None = None
    # "path" suits local endpoints such as moto or MinIO; AWS works with "virtual".
    s3_addressing_style: Literal["auto", "virtual", "path"] = "auto"

    download_ttl_seconds: int = Field(default=60, ge=1, le=MAX_DOWNLOAD_TTL_SECONDS)
    upload_ttl_seconds: int = Field(default=300, ge=1, le=3600)
    max_upload_bytes: int = Field(default=10_000_000, ge=1, le=5 * 1024**3)
    allowed_content_types: list[str] = Field(default_factory=lambda: list(DEFAULT_CONTENT_TYPES))

    # Upper bound on how long a cached device status may be served after it changes.
    identity_cache_max_staleness_seconds: float = Field(default=1.0, gt=0, le=1.0)

    # Directory of device certificates to register at startup. Development only: it
    # exists so the embedded store, which starts empty, can serve known devices.
    register_devices_from: Path | None = None
    register_household_id: str = "household-demo"

    @field_validator("allowed_content_types", mode="before")
    @classmethod
    def _split_content_types(cls, value: object) -> object:
        # Accept "audio/wav,audio/ogg" as well as a JSON list.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_content_types")
    @classmethod
    def _check_content_types(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("PETVAULT_ALLOWED_CONTENT_TYPES is empty; an empty allow-list allows nothing")
        for item in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", item):
                raise ValueError(f"invalid content type {item!r} in PETVAULT_ALLOWED_CONTENT_TYPES")
        return [item.lower() for item in value]

    # Resolved paths: explicit settings win, otherwise the file names of `certs init`.
    @property
    def device_ca_path(self) -> Path:
        return self.device_ca or self.certs_dir / "device-ca.pem"

    @property
    def device_ca_key_path(self) -> Path:
        return self.device_ca_key or self.certs_dir / "device-ca.key"

    @property
    def operator_ca_path(self) -> Path:
        return self.operator_ca or self.certs_dir / "operator-ca.pem"

    @property
    def tls_cert_path(self) -> Path:
        return self.tls_cert or self.certs_dir / "server.pem"

    @property
    def tls_key_path(self) -> Path:
        return self.tls_key or self.certs_dir / "server.key"

    @property
    def uses_embedded_mongodb(self) -> bool:
        return self.mongodb_uri == EMBEDDED_MONGODB_URI


class ConfigError(ValueError):
    """A setting that prevents startup. The message names the setting and the fix."""


def check_mongodb_uri_escaping(uri: str) -> None:
    """Reject a MongoDB URI whose user or password holds unescaped reserved characters.

    PyMongo's own error for this case does not say which part is wrong, and a password
    with `@` silently turns part of itself into the host name.

    Raises:
        ConfigError: the userinfo part contains `@`, `/` or `:` beyond the single
            user/password separator.
    """
    scheme, separator, rest = uri.partition("://")
    if not separator or scheme not in ("mongodb", "mongodb+srv"):
        return
    authority = rest.split("?", 1)[0]
    if "@" not in authority:
        return
    # The host list never contains "@", so the userinfo ends at the last one.
    userinfo = authority.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    if "@" in userinfo or "/" in userinfo or ":" in password:
        raise ConfigError(
            "PETVAULT_MONGODB_URI: the user name or password contains an unescaped '@', '/' or ':'; "
            "percent-encode them (urllib.parse.quote_plus), e.g. 'p@ss' becomes 'p%40ss'"
        )
    if not user:
        raise ConfigError("PETVAULT_MONGODB_URI: the credentials part has an empty user name")


def _mongodb_hosts(uri: str) -> list[str]:
    rest = uri.partition("://")[2]
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    host_list = authority.rpartition("@")[2]
    hosts = []
    for entry in host_list.split(","):
        if entry.startswith("["):  # IPv6 literal: [::1]:27017
            hosts.append(entry[1 : entry.find("]")])
        else:
            hosts.append(entry.rsplit(":", 1)[0] if entry.count(":") == 1 else entry)
    return hosts


def _is_loopback_or_socket(host: str) -> bool:
    if host.endswith(".sock") or host.startswith("%2F") or host.startswith("/"):
        return True
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mongodb_uses_tls(uri: str) -> bool:
    if uri.startswith("mongodb+srv://"):
        return True  # SRV URIs enable TLS unless told otherwise.
    query = urlsplit(uri).query.lower()
    return "tls=true" in query or "ssl=true" in query


def production_problems(settings: Settings) -> list[str]:
    """List every setting that production mode rejects, each with its fix."""
    from certs.pki import is_development_ca  # the certs package owns the dev marker

    problems: list[str] = []
    uri = settings.mongodb_uri

    if settings.uses_embedded_mongodb:
        problems.append(
            "PETVAULT_MONGODB_URI is not set, so the embedded in-memory store would be used; "
            "set it to an authenticated mongodb:// or mongodb+srv:// URI"
        )
    else:
        userinfo = urlsplit(uri).netloc.rpartition("@")[0] if "://" in uri else ""
        if not userinfo:
            problems.append(
                "PETVAULT_MONGODB_URI has no credentials; production mode requires authentication "
                "(mongodb://USER:PASSWORD@HOST/...)"
            )
        hosts = _mongodb_hosts(uri)
        if not _mongodb_uses_tls(uri) and not all(_is_loopback_or_socket(h) for h in hosts):
            problems.append(
                f"PETVAULT_MONGODB_URI connects to {', '.join(hosts)} without TLS; "
                "add tls=true or use mongodb+srv://"
            )

    if not settings.s3_bucket:
        problems.append("PETVAULT_S3_BUCKET is not set; name the private, versioned recordings bucket")

    ca_path = settings.device_ca_path
    try:
        from cryptography import x509

        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        problems.append(f"PETVAULT_DEVICE_CA {str(ca_path)!r} cannot be read as a PEM certificate: {exc}")
    else:
        if is_development_ca(ca_cert):
            problems.append(
                f"PETVAULT_DEVICE_CA {str(ca_path)!r} is the development CA from `petvault certs init`; "
                "use the production device CA"
            )

    if settings.register_devices_from is not None:
        problems.append(
            "PETVAULT_REGISTER_DEVICES_FROM is a development shortcut; enroll devices through the admin API"
        )
    return problems
