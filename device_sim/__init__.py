"""Device simulator: a connected toy that uses petvault over mutual TLS and presigned URLs.

`DeviceClient` (client.py) calls the API and S3, `run_scenario` (scenario.py) runs the
end-to-end device flow, `synthesize_wav` (audio.py) makes the audio, and keygen.py
creates a device key and CSR. The `petvault-sim` command is in cli.py.
"""

from __future__ import annotations

from device_sim.audio import synthesize_wav
from device_sim.client import DeviceClient
from device_sim.errors import ApiError, DigestMismatchError, SimulatorError, StorageError
from device_sim.scenario import ScenarioResult, ScenarioStepError, run_scenario

__all__ = [
    "ApiError",
    "DeviceClient",
    "DigestMismatchError",
    "ScenarioResult",
    "ScenarioStepError",
    "SimulatorError",
    "StorageError",
    "run_scenario",
    "synthesize_wav",
]
