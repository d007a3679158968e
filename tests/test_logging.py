"""Presigned URLs never reach the logs, even with the service logging at DEBUG.

The test applies the logging setup of the `petvault` command at DEBUG level, and runs
the device scenario and a few API calls. Then it searches every log record of the
process (server, simulator, S3 stand-in) for the signatures and policies that the
server returned.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from certs.pki import PkiLayout
from device_sim.scenario import run_scenario
from service.cli import _QUIET_LOGGERS, configure_logging
from service.embedded import EmbeddedS3
from tests.clients import add_available_recording, api_client, declare_recording
from tests.harness import ServerLoop, device_client, make_settings

AUDIO = b"RIFF logging test audio"


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def service_logging() -> Iterator[_Collector]:
    """Configure logging as `petvault --log-level DEBUG` does, and collect every record."""
    root = logging.getLogger()
    saved = {name: logging.getLogger(name).level for name in ("", *_QUIET_LOGGERS)}
    configure_logging("DEBUG")
    # basicConfig leaves the root level alone when pytest's handlers are installed.
    root.setLevel(logging.DEBUG)
    collector = _Collector()
    root.addHandler(collector)
    yield collector
    root.removeHandler(collector)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def logged_secrets(
    pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop, service_logging: _Collector
) -> dict[str, Any]:
    """Run a server and the scenario, and return the secrets it signed and the log text."""
    server = server_loop.start_server(make_settings(pki.directory, s3))
    try:
        with device_client(pki, "toy-1", server.url) as client:
            run_scenario(client, log=lambda line: None, seconds=0.5)
        with api_client(pki, "toy-2", server.url) as client:
            form = declare_recording(client, AUDIO)["upload"]["fields"]
            recording_id = add_available_recording(client, AUDIO)
            download_url = client.get(f"/v1/recordings/{recording_id}").json()["download"]["url"]
    finally:
        server.stop()

    records = service_logging.records
    text = "\n".join(record.getMessage() + (record.exc_text or "") for record in records)
    return {
        "text": text,
        "record_count": len(records),
        "policy": form["policy"],
        "form_signature": form["x-amz-signature"],
        "url_signature": parse_qs(urlsplit(download_url).query)["X-Amz-Signature"][0],
    }


def test_logs_were_captured(logged_secrets: dict[str, Any]) -> None:
    # Guards the checks below against passing on an empty capture.
    assert logged_secrets["record_count"] > 0


def test_logs_contain_no_signature_parameter(logged_secrets: dict[str, Any]) -> None:
    assert "x-amz-signature" not in logged_secrets["text"].lower()


@pytest.mark.parametrize("secret", ["policy", "form_signature", "url_signature"])
def test_logs_contain_no_secret(secret: str, logged_secrets: dict[str, Any]) -> None:
    assert logged_secrets[secret] not in logged_secrets["text"]
