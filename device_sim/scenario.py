"""The end-to-end device scenario: identify, record, upload, complete, list and play.

`run_scenario` is a library function, so `petvault-sim scenario` and `petvault demo`
run the same steps and print the same lines.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from device_sim.audio import synthesize_wav
from device_sim.client import DeviceClient
from device_sim.errors import SimulatorError

CONTENT_TYPE = "audio/wav"

# Step names in the order they run. They appear in log lines and in ScenarioStepError.
STEPS = ("me", "record", "upload", "complete", "list", "play")


@dataclass(frozen=True)
class ScenarioResult:
    """Outcome of a successful scenario run."""

    device_id: str
    recording_id: str
    sha256: str
    size_bytes: int


class ScenarioStepError(SimulatorError):
    """A scenario step that failed, with the underlying error as `cause`."""

    def __init__(self, step: str, cause: BaseException) -> None:
        self.step = step
        self.cause = cause
        super().__init__(f"scenario step '{step}' failed: {cause}")


@contextmanager
def _step(name: str) -> Iterator[None]:
    try:
        yield
    except ScenarioStepError:
        raise
    except SimulatorError as exc:
        raise ScenarioStepError(name, exc) from exc


def run_scenario(
    client: DeviceClient,
    *,
    log: Callable[[str], None] = print,
    seconds: float = 3.0,
) -> ScenarioResult:
    """Run the device scenario against the server and return the new recording's ids.

    Steps, each logged as one ``[DEVICE] step: ...`` line:

    1. me: fetch the device identity, which also proves the mutual-TLS handshake.
    2. record: synthesize a WAV file of `seconds` seconds.
    3. upload: announce the recording, then send it with the presigned POST.
    4. complete: have the server verify the object and mark it available.
    5. list: find the new recording in the device's listing.
    6. play: fetch a presigned GET, download, and verify size and SHA-256.

    The recording is left on the server, so a later `list` shows it.

    Args:
        client: An open client for the device.
        log: Receives each progress line, `print` by default.
        seconds: Duration of the synthesized recording.

    Raises:
        ScenarioStepError: a step failed. Its message names the step and the cause.
    """
    with _step("me"):
        identity = client.me()
    device_id = identity["device_id"]
    prefix = f"[{device_id}]"
    log(
        f"{prefix} me: household {identity['household_id']}, "
        f"certificate valid until {identity['certificate_not_after']}"
    )

    with _step("record"):
        try:
            audio = synthesize_wav(seconds)
        except ValueError as exc:
            raise ScenarioStepError("record", exc) from exc
    sha256 = hashlib.sha256(audio).hexdigest()
    log(f"{prefix} record: {seconds:g} s of audio, {len(audio)} bytes, sha256 {sha256[:12]}")

    with _step("upload"):
        created = client.create_recording(CONTENT_TYPE, audio)
        recording_id = created["recording_id"]
        client.upload(created["upload"], audio, CONTENT_TYPE, filename=f"{recording_id}.wav")
    log(f"{prefix} upload: {len(audio)} bytes sent ({CONTENT_TYPE}), recording {recording_id}")

    with _step("complete"):
        completed = client.complete(recording_id)
        if completed["status"] != "available":
            raise SimulatorError(
                f"recording {recording_id} has status {completed['status']!r}, expected 'available'"
            )
    log(f"{prefix} complete: recording {recording_id} is available")

    with _step("list"):
        position = _find_in_listing(client, recording_id)
    log(f"{prefix} list: recording {recording_id} listed at position {position}")

    with _step("play"):
        recording = client.get_recording(recording_id)
        played = client.download(recording)
        if played != audio:
            # download() already checked the server's sha256; this checks that the
            # server stored the bytes that this device sent.
            raise SimulatorError(f"recording {recording_id} differs from the uploaded audio")
    log(f"{prefix} play: {len(played)} bytes downloaded, sha256 verified")

    return ScenarioResult(
        device_id=device_id,
        recording_id=recording_id,
        sha256=sha256,
        size_bytes=len(audio),
    )


def _find_in_listing(client: DeviceClient, recording_id: str) -> int:
    """Return the 1-based position of the recording in the listing, newest first."""
    for position, item in enumerate(client.iter_recordings(), start=1):
        if item["recording_id"] == recording_id:
            if item["status"] != "available":
                raise SimulatorError(
                    f"recording {recording_id} is listed with status {item['status']!r}, "
                    "expected 'available'"
                )
            return position
    raise SimulatorError(f"recording {recording_id} is missing from GET /v1/recordings")
