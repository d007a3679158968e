"""The device simulator against a live server: the scenario, and `petvault-sim` as a user
runs it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import PkiLayout
from device_sim.client import DeviceClient
from device_sim.errors import SimulatorError
from device_sim.scenario import STEPS, run_scenario
from service.embedded import EmbeddedS3
from tests.clients import closed_port
from tests.harness import RunningServer, ServerLoop, device_client, make_settings

SIM = str(Path(sys.executable).with_name("petvault-sim"))


@pytest.fixture(scope="module")
def server(pki: PkiLayout, s3: EmbeddedS3, server_loop: ServerLoop) -> Iterator[RunningServer]:
    """One server for the module: the CLI steps build on each other."""
    running = server_loop.start_server(make_settings(pki.directory, s3))
    yield running
    running.stop()


def _sim(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed executable, arguments from the test
        [SIM, *arguments], capture_output=True, text=True, cwd=cwd, timeout=60, check=False
    )


# --- the scenario as a library -------------------------------------------------------


def test_scenario_logs_every_step(pki: PkiLayout, server: RunningServer) -> None:
    lines: list[str] = []
    with device_client(pki, "toy-1", server.url) as client:
        result = run_scenario(client, log=lines.append, seconds=0.5)

    logged_steps = [line.split()[1].rstrip(":") for line in lines]

    assert result.device_id == "toy-1"
    assert logged_steps == list(STEPS)


def test_scenario_recording_downloads(pki: PkiLayout, server: RunningServer) -> None:
    with device_client(pki, "toy-2", server.url) as client:
        result = run_scenario(client, log=lambda line: None, seconds=0.5)
        played = client.download(client.get_recording(result.recording_id))

    assert len(played) == result.size_bytes


# --- petvault-sim ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_workdir(pki: PkiLayout, server: RunningServer,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sim")


@pytest.fixture(scope="module")
def cli_flow(
    pki: PkiLayout, server: RunningServer, cli_workdir: Path
) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run record, upload, list and play as toy-3, the way a user would, in `cli_workdir`."""
    common = ("--server", server.url, "--certs-dir", str(pki.directory), "--device", "toy-3")
    steps = {
        "record": _sim(*common, "record", "--seconds", "0.5", "--out", "clip.wav",
                       cwd=cli_workdir),
        "upload": _sim(*common, "upload", "clip.wav", cwd=cli_workdir),
    }
    recording_id = steps["upload"].stdout.strip()
    steps["list"] = _sim(*common, "list", cwd=cli_workdir)
    steps["play"] = _sim(*common, "play", recording_id, "--out", "played.wav", cwd=cli_workdir)
    return steps


Steps = dict[str, subprocess.CompletedProcess[str]]


@pytest.mark.parametrize("step", ["record", "upload", "list", "play"])
def test_cli_step_succeeds(step: str, cli_flow: Steps) -> None:
    completed = cli_flow[step]

    assert completed.returncode == 0, completed.stderr


def test_cli_list_shows_upload(cli_flow: Steps) -> None:
    recording_id = cli_flow["upload"].stdout.strip()

    assert recording_id in cli_flow["list"].stdout


def test_cli_play_verifies_sha256(cli_flow: Steps) -> None:
    assert "sha256 verified" in cli_flow["play"].stdout


def test_cli_play_writes_uploaded_bytes(cli_flow: Steps, cli_workdir: Path) -> None:
    played = (cli_workdir / "played.wav").read_bytes()

    assert played == (cli_workdir / "clip.wav").read_bytes()


def test_cli_missing_certificate_one_line(pki: PkiLayout, server: RunningServer,
                                          tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pem"

    completed = _sim("--server", server.url, "--certs-dir", str(pki.directory),
                     "--cert", str(missing), "--key", str(tmp_path / "nowhere.key"), "me",
                     cwd=tmp_path)

    assert completed.returncode == 1
    assert completed.stderr.splitlines() == [
        f"petvault-sim: error: device certificate file {missing} is missing"
    ]


def test_cli_server_unreachable_one_line(pki: PkiLayout, tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{closed_port()}"

    completed = _sim("--server", url, "--certs-dir", str(pki.directory), "me", cwd=tmp_path)
    lines = completed.stderr.splitlines()

    assert completed.returncode == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"petvault-sim: error: server unreachable: connection to {url}")


def test_client_server_unreachable_raises(pki: PkiLayout) -> None:
    url = f"https://127.0.0.1:{closed_port()}"
    with DeviceClient(pki.device_cert("toy-1"), pki.device_key("toy-1"), pki.server_ca_cert,
                      url) as client, pytest.raises(SimulatorError, match="server unreachable"):
        client.me()
