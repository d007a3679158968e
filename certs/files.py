"""Writing keys and certificates to disk with safe permissions.

A private key file is created with mode 0600 in the same system call that
creates it, so no other user can open it between creation and a later chmod.
Existing files are kept unless the caller passes ``force=True``. With force,
the new content goes to a temporary file in the same directory that then
replaces the old file in one rename.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

PRIVATE_KEY_MODE = 0o600
CERTIFICATE_MODE = 0o644
DIRECTORY_MODE = 0o700


class OutputFileExistsError(FileExistsError):
    """Raised when a key or certificate file exists and ``force`` is false."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} already exists")
        self.path = path


def write_private_key(path: Path, key: PrivateKeyTypes, *, force: bool) -> None:
    """Write an unencrypted PKCS#8 PEM private key, created with mode 0600.

    Args:
        path: Destination file. Its directory must exist.
        key: The private key to store.
        force: Replace an existing file. Without it an existing file raises.

    Raises:
        OutputFileExistsError: ``path`` exists and ``force`` is false.
    """
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    write_new_file(path, pem, mode=PRIVATE_KEY_MODE, force=force)


def write_certificate(path: Path, certificate: x509.Certificate, *, force: bool) -> None:
    """Write a PEM certificate, created with mode 0644.

    Raises:
        OutputFileExistsError: ``path`` exists and ``force`` is false.
    """
    pem = certificate.public_bytes(serialization.Encoding.PEM)
    write_new_file(path, pem, mode=CERTIFICATE_MODE, force=force)


def check_not_exists(paths: list[Path]) -> None:
    """Raise for the first path that exists, before any work starts.

    Callers that write several files run this first, so a rejected call
    writes nothing. The exclusive create in `write_new_file` still
    catches a file that appears in between.

    Raises:
        OutputFileExistsError: One of ``paths`` exists, even as a dangling symlink.
    """
    for path in paths:
        if path.is_symlink() or path.exists():
            raise OutputFileExistsError(path)


def make_private_directory(path: Path) -> None:
    """Create ``path`` and its parents with mode 0700 if missing.

    Existing directories keep their mode.
    """
    path.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)


def write_new_file(path: Path, data: bytes, *, mode: int, force: bool) -> None:
    """Create ``path`` with ``mode`` and write ``data`` to it.

    The mode is applied at creation (the process umask can only narrow it).
    Without ``force``, ``O_EXCL`` makes creation fail if anything, including a
    symlink, already sits at ``path``. With ``force``, the data goes to a new
    temporary file that ``os.replace`` renames over ``path``, so a symlink at
    ``path`` is replaced rather than followed.

    Raises:
        OutputFileExistsError: ``path`` exists and ``force`` is false.
    """
    if not force:
        try:
            _create_exclusive(path, data, mode)
        except FileExistsError:
            raise OutputFileExistsError(path) from None
        return

    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _create_exclusive(temporary, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _create_exclusive(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
