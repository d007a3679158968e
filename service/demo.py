"""`petvault demo`: the whole system on one machine, with no external service.

It creates the development PKI when missing, starts moto's S3 server and the
in-memory MongoDB stand-in, serves the device API over mutual TLS, and drives two
simulated toys through record, upload, complete, list and play. toy-2 then tries to
read toy-1's recording and must get 404. Last, an operator revokes toy-2 through the
admin listener: toy-2's next request, on the connection it already holds, must be
rejected while toy-1 keeps working, and the CRL must list toy-2's serial.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from certs.authority import CertificateAuthorityError
from certs.leaf import ValidityError
from certs.pki import (
    PkiLayout,
    init_dev_pki,
    issue_device_certificate,
    issue_operator_certificate,
)
from device_sim.client import DeviceClient
from device_sim.errors import ApiError, SimulatorError
from device_sim.scenario import ScenarioResult, run_scenario
from service.admin_client import AdminClient, AdminClientError
from service.config import EMBEDDED_MONGODB_URI, ConfigError, Settings
from service.embedded import EMBEDDED_S3_WARNING, EmbeddedS3
from service.server import PetvaultServer
from service.storage.mongo import StoreUnavailableError

logger = logging.getLogger(__name__)

DEMO_DEVICES = ("toy-1", "toy-2")
DEMO_OPERATOR = "demo-operator"
REVOKED_DEVICE = "toy-2"
# The PKI directory that `petvault admin` reads when no --dir is given.
DEFAULT_CERTS_DIR = Path("certs/dev")
_T = TypeVar("_T")


class DemoStepError(Exception):
    def __init__(self, step: str, cause: BaseException | str) -> None:
        self.step = step
        super().__init__(f"demo step '{step}' failed: {cause}")


def _say(message: str) -> None:
    print(message, flush=True)


def prepare_pki(certs_dir: Path) -> PkiLayout:
    """Create the development PKI and the two demo toys when they are missing."""
    layout = PkiLayout(certs_dir)
    if not layout.device_ca_cert.exists():
        _say(f"creating the development PKI in {certs_dir}/")
        init_dev_pki(certs_dir)
    if not any(layout.devices_dir.glob("*.pem")):
        for device_id in DEMO_DEVICES:
            _say(f"issuing a device certificate for {device_id}")
            issue_device_certificate(certs_dir, device_id)
    if not layout.operator_cert(DEMO_OPERATOR).exists():
        _say(f"issuing an operator certificate for {DEMO_OPERATOR}")
        issue_operator_certificate(certs_dir, DEMO_OPERATOR)
    for device_id in DEMO_DEVICES:
        if not layout.device_cert(device_id).exists():
            raise DemoStepError(
                "prepare certificates",
                f"{layout.device_cert(device_id)} is missing; run `petvault certs issue-device "
                f"{device_id} --dir {certs_dir}` or remove {layout.devices_dir}",
            )
    return layout


def _client_for(layout: PkiLayout, device_id: str, port: int) -> DeviceClient:
    return DeviceClient(
        layout.device_cert(device_id),
        layout.device_key(device_id),
        layout.server_ca_cert,
        f"https://127.0.0.1:{port}",
    )


def _run_device_steps(layout: PkiLayout, port: int) -> None:
    """Run the toys' scenario and the cross-device check (blocking; runs in a thread)."""
    results: dict[str, ScenarioResult] = {}
    for device_id in DEMO_DEVICES:
        _say(f"\n== {device_id}: record -> upload -> complete -> list -> play")
        with _client_for(layout, device_id, port) as client:
            try:
                results[device_id] = run_scenario(client, log=_say)
            except SimulatorError as exc:
                raise DemoStepError(f"{device_id} scenario", exc) from exc

    _say("\n== toy-2 tries to read toy-1's recording")
    target = results["toy-1"].recording_id
    with _client_for(layout, "toy-2", port) as client:
        try:
            client.get_recording(target)
        except ApiError as exc:
            if exc.status != 404:
                raise DemoStepError(
                    "toy-2 reads toy-1's recording", f"expected 404, got {exc}"
                ) from exc
            _say(
                f"[toy-2] get {target}: 404 {exc.code} "
                "(as expected: not yours looks like not found)"
            )
        except SimulatorError as exc:
            raise DemoStepError("toy-2 reads toy-1's recording", exc) from exc
        else:
            raise DemoStepError("toy-2 reads toy-1's recording", "expected 404, got the recording")


def _admin_client(layout: PkiLayout, admin_port: int) -> AdminClient:
    return AdminClient(
        f"https://127.0.0.1:{admin_port}",
        layout.operator_cert(DEMO_OPERATOR),
        layout.operator_key(DEMO_OPERATOR),
        layout.server_ca_cert,
    )


def _run_revocation_step(layout: PkiLayout, device_port: int, admin_port: int) -> None:
    """Revoke toy-2 while both toys hold open connections; toy-1 must keep working."""
    step = f"revoke {REVOKED_DEVICE}"
    _say(f"\n== the operator revokes {REVOKED_DEVICE}; both toys keep their connections open")
    with (
        _client_for(layout, "toy-1", device_port) as toy_1,
        _client_for(layout, REVOKED_DEVICE, device_port) as toy_2,
        _admin_client(layout, admin_port) as admin,
    ):
        try:
            toy_1.me()
            toy_2.me()
            _say(f"[{REVOKED_DEVICE}] GET /v1/me: 200 before the revocation")
            started = time.monotonic()
            answer = admin.revoke_device(REVOKED_DEVICE, "keyCompromise")
            _say(
                f"[{DEMO_OPERATOR}] POST /admin/v1/devices/{REVOKED_DEVICE}/revoke: 200, "
                f"revoked at {answer['revoked_at']} (keyCompromise)"
            )
        except (SimulatorError, AdminClientError) as exc:
            raise DemoStepError(step, exc) from exc

        try:
            toy_2.me()
        except ApiError as exc:
            elapsed_ms = (time.monotonic() - started) * 1000
            if exc.status != 401 or exc.code != "certificate_revoked":
                raise DemoStepError(step, f"expected 401 certificate_revoked, got {exc}") from exc
            _say(
                f"[{REVOKED_DEVICE}] next request on the same connection: 401 {exc.code} "
                f"({elapsed_ms:.0f} ms after the revoke call started)"
            )
        except SimulatorError as exc:
            raise DemoStepError(step, exc) from exc
        else:
            raise DemoStepError(step, f"{REVOKED_DEVICE} was still served after its revocation")

        try:
            page = toy_1.list_recordings()
            _say(f"[toy-1] list: 200, {len(page['recordings'])} recording(s); toy-1 keeps working")
            crl = x509.load_der_x509_crl(admin.crl())
        except (SimulatorError, AdminClientError, ValueError) as exc:
            raise DemoStepError(step, exc) from exc

    serials = [format(entry.serial_number, "x") for entry in crl]
    certificate = x509.load_pem_x509_certificate(layout.device_cert(REVOKED_DEVICE).read_bytes())
    revoked_serial = format(certificate.serial_number, "x")
    if revoked_serial not in serials:
        raise DemoStepError(step, f"the CRL lacks {REVOKED_DEVICE}'s serial {revoked_serial}")
    _say(f"[{DEMO_OPERATOR}] GET /admin/v1/crl: {len(serials)} revoked serial(s):")
    for serial in serials:
        _say(f"  {serial}")


def _run_all_steps(layout: PkiLayout, device_port: int, admin_port: int) -> None:
    _run_device_steps(layout, device_port)
    _run_revocation_step(layout, device_port, admin_port)


async def _with_server(
    settings: Settings, work: Callable[[PetvaultServer], _T], keep_serving: bool
) -> _T:
    server = PetvaultServer(settings)
    serving = asyncio.create_task(server.serve())
    started = asyncio.create_task(server.started.wait())
    await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        await serving  # re-raises the startup error
        raise DemoStepError("start server", "the server stopped during startup")

    try:
        result = await asyncio.to_thread(work, server)
        if keep_serving:
            server.install_signal_handlers()
            device_url = f"https://127.0.0.1:{server.device_port}"
            admin = f"petvault admin --server https://127.0.0.1:{server.admin_port}"
            if settings.certs_dir != DEFAULT_CERTS_DIR:
                admin += f" --dir {settings.certs_dir}"
            _say(
                f"\nserving devices on {device_url} and operators on port {server.admin_port} "
                "until Ctrl-C; try:\n"
                f"  petvault-sim --server {device_url} --device toy-1 list\n"
                f"  {admin} devices\n"
                f"  {admin} revoke toy-1 --reason keyCompromise\n"
                f"  {admin} crl"
            )
            await serving
        return result
    finally:
        server.stop()
        if not serving.done():
            await serving


def run_demo(*, certs_dir: Path, port: int, keep_serving: bool, admin_port: int = 8444) -> int:
    """Run the demo; return the process exit status."""
    # The steps print their own lines; keep per-request logs out of the way.
    for name in ("uvicorn.access", "uvicorn.error", "service"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _say("petvault demo: embedded stand-ins, NOT for production.")
    _say("  - MongoDB: in-memory mongomock store; everything is lost at exit.")
    _say(f"  - S3: {EMBEDDED_S3_WARNING}.")
    try:
        try:
            layout = prepare_pki(certs_dir)
        except (CertificateAuthorityError, ValidityError, OSError) as exc:
            raise DemoStepError("prepare certificates", exc) from exc
        with EmbeddedS3() as s3:
            settings = Settings(
                env="development",
                port=port,
                admin_port=admin_port,
                health_port=0,
                certs_dir=certs_dir,
                mongodb_uri=EMBEDDED_MONGODB_URI,
                s3_bucket=s3.bucket,
                s3_region=s3.region,
                s3_endpoint_url=s3.endpoint_url,
                s3_addressing_style="path",
                register_devices_from=layout.devices_dir,
                crl_path=certs_dir / "device-ca.crl.pem",
            )

            def work(server: PetvaultServer) -> None:
                _run_all_steps(layout, server.device_port, server.admin_port)

            asyncio.run(_with_server(settings, work, keep_serving))
    except DemoStepError as exc:
        print(f"\npetvault demo FAILED: {exc}", file=sys.stderr)
        return 1
    except (OSError, ConfigError, StoreUnavailableError) as exc:
        print(f"\npetvault demo FAILED at step 'start server': {exc}", file=sys.stderr)
        return 1
    _say(
        "\npetvault demo passed: both toys recorded, uploaded, listed and played back "
        "with a verified SHA-256, toy-2 could not read toy-1's recording, and after its "
        "revocation toy-2 was rejected on its open connection while toy-1 kept working."
    )
    return 0
