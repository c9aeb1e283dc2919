"""File helpers of model handling: atomic writes and content hashes (no torch, no diffusers)."""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from invsr_runtime import tempfiles

#: Read size for hashing: large enough to stream multi-GB weights at disk speed.
HASH_CHUNK = 1 << 22


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write via ``write(fileobj)`` to a temp file beside ``path``, fsync, then rename it into place.

    A crash or an exception never leaves a half-written file under the final name; the temporary name
    carries the owner's pid, so a later write removes what a killed run left (`invsr_runtime.tempfiles`).
    """
    tempfiles.atomic_write(path, write, durable=True)


def sha256_file(path: Path, progress: Callable[[int], Any] | None = None) -> str:
    """Hex sha256 of a file's bytes; ``progress(n)`` is called with each chunk's size (e.g. a tqdm update)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_CHUNK):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.hexdigest()


def git_blob_sha1(path: Path) -> str:
    """The git object id of a file (sha1 of ``blob <size>\\0`` + bytes): the hub's id for non-LFS files."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()
