"""Service settings from `PETVAULT_*` environment variables, and the production checks.

`Settings` is the one place where every knob lives. `production_problems` lists each
insecure setting that production mode rejects, so `petvault serve` can print them all
at once instead of failing on the first.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote_plus

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.limit_storage import check_storage_url
from service.limits import check_rate_limit_overrides, parse_rate_limits

# URIs that select the in-process MongoDB-API stand-in instead of a real server.
EMBEDDED_MONGODB_URI = "embedded://"

DEFAULT_CONTENT_TYPES = ("audio/wav", "audio/ogg", "audio/mpeg", "audio/mp4")
MAX_DOWNLOAD_TTL_SECONDS = 900


class Settings(BaseSettings):
    """All petvault settings. Each field reads `PETVAULT_<FIELD>` from the environment."""

    # Validation errors never repeat the input: URIs here can carry passwords.
    model_config = SettingsConfigDict(
        env_prefix="PETVAULT_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

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
    # NoDecode: the validator below reads the text, so an empty or malformed value gets
    # a message naming the variable instead of pydantic-settings' SettingsError.
    allowed_content_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_CONTENT_TYPES)
    )

    # A client of a mutual-TLS listener must send each request head within this many
    # seconds of the handshake or of the previous response. Every listener also uses it
    # as the keep-alive timeout.
    request_header_timeout_seconds: int = Field(default=20, ge=1, le=300)
    # Open connections per listener. While more are open, or more requests are running,
    # each new request gets 503.
    max_connections: int = Field(default=1000, ge=1)

    # Upper bound on how long a cached device status may be served after it changes.
    identity_cache_max_staleness_seconds: float = Field(default=1.0, gt=0, le=1.0)

    # The device CA's CRL: nextUpdate - thisUpdate, and an optional PEM file that is
    # replaced after every signing (for nginx `ssl_crl` or a load balancer).
    crl_next_update_hours: float = Field(default=24.0, gt=0, le=24 * 31)
    crl_path: Path | None = None

    # Directory of device certificates to register at startup. Development only: it
    # exists so the embedded store, which starts empty, can serve known devices.
    register_devices_from: Path | None = None
    register_household_id: str = "household-demo"

    # Per-device rate limits, in the `limits` notation; every limit in a list applies.
    rate_limit_enabled: bool = True
    rate_limits: str = "60/minute;200/hour;400/day"
    # Uploads (POST /v1/recordings) and downloads (GET /v1/recordings/{id}) get a budget
    # of their own when set; unset, they count against `rate_limits`.
    rate_limits_upload: str | None = None
    rate_limits_download: str | None = None
    # Requests whose certificate fails identity, per certificate fingerprint.
    rate_limit_failed_auth: str = "10/minute"
    # JSON, device id to limits: {"toy-9": "600/minute"} replaces the default budget's
    # limits; {"toy-9": {"download": "600/minute"}} names route classes.
    rate_limit_overrides: Annotated[dict[str, dict[str, str]], NoDecode] = Field(
        default_factory=dict
    )
    # memory:// is per process; redis://HOST:PORT/DB shares the budget between workers.
    rate_limit_storage: str = "memory://"
    # Bound on one rate-limit check; a slower storage counts as unavailable.
    rate_limit_storage_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    rate_limit_fail_open: bool = False

    @field_validator("admin_host")
    @classmethod
    def _check_admin_host(cls, value: str) -> str:
        # The admin API revokes devices, so it must never face the Internet. 0.0.0.0
        # counts as private to the ipaddress module but binds every interface.
        if value == "localhost":
            return value
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(
                f"PETVAULT_ADMIN_HOST {value!r} is not an IP address; use a loopback or "
                "private address such as 127.0.0.1 or 10.0.0.5"
            ) from None
        if address.is_unspecified or not (address.is_loopback or address.is_private):
            raise ValueError(
                f"PETVAULT_ADMIN_HOST {value} is not a loopback or private address; "
                "the admin listener must not be reachable from the Internet"
            )
        return value

    @field_validator("allowed_content_types", mode="before")
    @classmethod
    def _split_content_types(cls, value: object) -> object:
        # Accept "audio/wav,audio/ogg" as well as a JSON list.
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"PETVAULT_ALLOWED_CONTENT_TYPES is not a valid JSON list ({exc.msg}); "
                    'write e.g. audio/wav,audio/ogg or ["audio/wav", "audio/ogg"]'
                ) from None
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_content_types")
    @classmethod
    def _check_content_types(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError(
                "PETVAULT_ALLOWED_CONTENT_TYPES is empty; an empty allow-list allows nothing"
            )
        for item in value:
            if not re.fullmatch(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*", item):
                raise ValueError(f"invalid content type {item!r} in PETVAULT_ALLOWED_CONTENT_TYPES")
        return [item.lower() for item in value]

    @field_validator(
        "rate_limits", "rate_limits_upload", "rate_limits_download", "rate_limit_failed_auth"
    )
    @classmethod
    def _check_rate_limits(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        parse_rate_limits(value, f"PETVAULT_{str(info.field_name).upper()}")
        return value.strip()

    @field_validator("rate_limit_overrides", mode="before")
    @classmethod
    def _parse_rate_limit_overrides(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"PETVAULT_RATE_LIMIT_OVERRIDES is not valid JSON ({exc.msg}); "
                    'write e.g. {"toy-9": "600/minute"}'
                ) from None
        if isinstance(value, dict):
            # A plain limit list overrides the default budget.
            return {
                device_id: {"default": limits} if isinstance(limits, str) else limits
                for device_id, limits in value.items()
            }
        return value

    @field_validator("rate_limit_overrides")
    @classmethod
    def _check_rate_limit_overrides(
        cls, value: dict[str, dict[str, str]]
    ) -> dict[str, dict[str, str]]:
        check_rate_limit_overrides(value)
        return value

    @field_validator("rate_limit_storage")
    @classmethod
    def _check_rate_limit_storage(cls, value: str) -> str:
        check_storage_url(value)
        return value

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
    """Reject a MongoDB URI whose user or password contains unescaped reserved characters.

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
            "PETVAULT_MONGODB_URI: the user name or password contains an unescaped "
            "'@', '/' or ':'; percent-encode them (urllib.parse.quote_plus), "
            "e.g. 'p@ss' becomes 'p%40ss'"
        )
    if not user:
        raise ConfigError("PETVAULT_MONGODB_URI: the credentials part has an empty user name")


def mongodb_hosts(uri: str) -> list[str]:
    """Return the hosts of a MongoDB URI, without its credentials or options."""
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


# Without an explicit `tls`, PyMongo 4 turns TLS on when one of these options is set
# (pymongo/client_options.py, `_parse_ssl_options`).
_TLS_FILE_OPTIONS = (
    "tlscafile",
    "tlscertificatekeyfile",
    "tlscertificatekeyfilepassword",
    "tlscrlfile",
)

# Options that turn off verification of the server certificate, by lowercase name,
# with PyMongo's spelling and what each accepts.
_INSECURE_TLS_OPTIONS = {
    "tlsinsecure": ("tlsInsecure", "any server certificate for any host name"),
    "tlsallowinvalidcertificates": ("tlsAllowInvalidCertificates", "any server certificate"),
    "tlsallowinvalidhostnames": (
        "tlsAllowInvalidHostnames",
        "a server certificate issued for another host name",
    ),
}

# Mechanisms that authenticate without a user name and password in the URI: a client
# certificate, AWS IAM credentials, or an OIDC token. PyMongo 4.20 compares the value
# case-sensitively (pymongo/common.py, `validate_auth_mechanism`).
_MECHANISMS_WITHOUT_USERINFO = ("MONGODB-X509", "MONGODB-AWS", "MONGODB-OIDC")


def _mongodb_options(uri: str) -> dict[str, list[str]]:
    """Return every value of each URI option, by lowercase option name.

    The split follows PyMongo 4.20 (pymongo/uri_parser_shared.py): options follow the
    first `?`, separated by `&` or by `;`, names are case-insensitive, and values are
    decoded with `unquote_plus`. PyMongo keeps the last value of a repeated option.
    """
    query = uri.partition("?")[2]
    separator = ";" if ";" in query and "&" not in query else "&"
    options: dict[str, list[str]] = {}
    for pair in query.split(separator):
        name, equals, value = pair.partition("=")
        if equals:
            options.setdefault(name.lower(), []).append(unquote_plus(value))
    return options


def _mongodb_uses_tls(uri: str) -> bool:
    # `ssl` is PyMongo's alias of `tls`. An explicit value wins, so mongodb+srv:// with
    # tls=false has no TLS.
    options = _mongodb_options(uri)
    explicit = options.get("tls") or options.get("ssl")
    if explicit:
        return explicit[-1].lower() == "true"
    if any(options.get(name) for name in _TLS_FILE_OPTIONS):
        return True
    return uri.startswith("mongodb+srv://")


def _insecure_tls_problems(uri: str) -> list[str]:
    # PyMongo accepts only "true" and "false" here, so any value but "false" is either
    # insecure or fails at startup anyway. The value is not echoed: with an unescaped
    # "?" in the password, it would be part of the password.
    options = _mongodb_options(uri)
    problems = []
    for name, (spelling, accepted) in _INSECURE_TLS_OPTIONS.items():
        if any(value.lower() != "false" for value in options.get(name, ())):
            problems.append(
                f"PETVAULT_MONGODB_URI sets {spelling}, so the client accepts {accepted}; "
                "remove the option, and set tlsCAFile=PATH if the server's CA is private"
            )
    return problems


def _mongodb_has_credentials(uri: str) -> bool:
    # The userinfo ends at the last "@" before the options, as in
    # `check_mongodb_uri_escaping`.
    userinfo = uri.partition("://")[2].split("?", 1)[0].rpartition("@")[0]
    mechanisms = _mongodb_options(uri).get("authmechanism")
    return bool(userinfo) or bool(mechanisms and mechanisms[-1] in _MECHANISMS_WITHOUT_USERINFO)


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
        try:
            check_mongodb_uri_escaping(uri)
        except ConfigError as exc:
            problems.append(str(exc))
        if not _mongodb_has_credentials(uri):
            problems.append(
                "PETVAULT_MONGODB_URI has no credentials; production mode requires authentication "
                "(mongodb://USER:PASSWORD@HOST/..., or authMechanism=MONGODB-X509, "
                "MONGODB-AWS or MONGODB-OIDC)"
            )
        hosts = mongodb_hosts(uri)
        if not _mongodb_uses_tls(uri) and not all(_is_loopback_or_socket(h) for h in hosts):
            problems.append(
                f"PETVAULT_MONGODB_URI connects to {', '.join(hosts)} without TLS; "
                "add tls=true or use mongodb+srv://"
            )
        problems.extend(_insecure_tls_problems(uri))

    if not settings.s3_bucket:
        problems.append(
            "PETVAULT_S3_BUCKET is not set; name the private, versioned recordings bucket"
        )

    ca_path = settings.device_ca_path
    try:
        from cryptography import x509

        ca_cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    except (OSError, ValueError) as exc:
        problems.append(
            f"PETVAULT_DEVICE_CA {str(ca_path)!r} cannot be read as a PEM certificate: {exc}"
        )
    else:
        if is_development_ca(ca_cert):
            problems.append(
                f"PETVAULT_DEVICE_CA {str(ca_path)!r} is the development CA from "
                "`petvault certs init`; use the production device CA"
            )

    if settings.register_devices_from is not None:
        problems.append(
            "PETVAULT_REGISTER_DEVICES_FROM is a development shortcut; "
            "enroll devices through the admin API"
        )

    if not settings.rate_limit_enabled:
        problems.append(
            "PETVAULT_RATE_LIMIT_ENABLED is false, which turns off per-device rate limits; "
            "production mode requires them"
        )
    return problems


def unreadable_tls_files(settings: Settings) -> list[str]:
    """List each TLS file the listeners need that cannot be read, with the setting to fix.

    uvicorn would otherwise fail deep inside its startup with a traceback that does not
    name the file.
    """
    required = [
        ("PETVAULT_TLS_CERT", settings.tls_cert_path),
        ("PETVAULT_TLS_KEY", settings.tls_key_path),
        ("PETVAULT_DEVICE_CA", settings.device_ca_path),
        ("PETVAULT_OPERATOR_CA", settings.operator_ca_path),
    ]
    problems = []
    for variable, path in required:
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            problems.append(
                f"{variable} {str(path)!r} cannot be read ({exc.strerror}); create the PKI with "
                "`petvault certs init` or point the variable at the file"
            )
    return problems
