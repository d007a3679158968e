"""`petvault demo`: the whole system on one machine, with no external service.

It creates the development PKI when missing, starts moto's S3 server and the
in-memory MongoDB stand-in, serves the device API over mutual TLS, and drives two
simulated toys through record, upload, complete, list and play. toy-2 then tries to
read toy-1's recording and must get 404.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from certs.pki import PkiLayout, init_dev_pki, issue_device_certificate
from device_sim.client import DeviceClient
from device_sim.errors import ApiError, SimulatorError
from device_sim.scenario import ScenarioResult, run_scenario
from service.config import EMBEDDED_MONGODB_URI, Settings
from service.embedded import EMBEDDED_S3_WARNING, EmbeddedS3
from service.server import PetvaultServer

logger = logging.getLogger(__name__)

DEMO_DEVICES = ("toy-1", "toy-2")
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
                raise DemoStepError("toy-2 reads toy-1's recording", f"expected 404, got {exc}") from exc
            _say(f"[toy-2] get {target}: 404 {exc.code} (as expected: not yours looks like not found)")
        except SimulatorError as exc:
            raise DemoStepError("toy-2 reads toy-1's recording", exc) from exc
        else:
            raise DemoStepError("toy-2 reads toy-1's recording", "expected 404, got the recording")


async def _with_server(settings: Settings, work: Callable[[int], _T], keep_serving: bool) -> _T:
    server = PetvaultServer(settings)
    serving = asyncio.create_task(server.serve())
    started = asyncio.create_task(server.started.wait())
    await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():
        await serving  # re-raises the startup error
        raise DemoStepError("start server", "the server stopped during startup")

    try:
        result = await asyncio.to_thread(work, server.device_port)
        if keep_serving:
            server.install_signal_handlers()
            _say(
                f"\nserving on https://127.0.0.1:{server.device_port} until Ctrl-C; try:\n"
                f"  petvault-sim --server https://127.0.0.1:{server.device_port} --device toy-1 list"
            )
            await serving
        return result
    finally:
        server.stop()
        if not serving.done():
            await serving


def run_demo(*, certs_dir: Path, port: int, keep_serving: bool) -> int:
    """Run the demo; return the process exit status."""
    # The steps print their own lines; keep per-request logs out of the way.
    for name in ("uvicorn.access", "uvicorn.error", "service"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _say("petvault demo: embedded stand-ins, NOT for production.")
    _say("  - MongoDB: in-memory mongomock store; everything is lost at exit.")
    _say(f"  - S3: {EMBEDDED_S3_WARNING}.")
    try:
        layout = prepare_pki(certs_dir)
        with EmbeddedS3() as s3:
            settings = Settings(
                env="development",
                port=port,
                health_port=0,
                certs_dir=certs_dir,
                mongodb_uri=EMBEDDED_MONGODB_URI,
                s3_bucket=s3.bucket,
                s3_region=s3.region,
                s3_endpoint_url=s3.endpoint_url,
                s3_addressing_style="path",
                register_devices_from=layout.devices_dir,
            )
            asyncio.run(_with_server(settings, lambda bound: _run_device_steps(layout, bound),
                                     keep_serving))
    except DemoStepError as exc:
        print(f"\npetvault demo FAILED: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"\npetvault demo FAILED at step 'start server': {exc}", file=sys.stderr)
        return 1
    _say("\npetvault demo passed: both toys recorded, uploaded, listed and played back "
         "with a verified SHA-256, and toy-2 could not read toy-1's recording.")
    return 0
