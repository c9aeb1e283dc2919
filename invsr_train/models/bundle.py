"""A model bundle: one folder with everything export needs, and a lock file that says what it must hold.

Layout (written by ``invsr-models download``)::

    DIR/model_index.json  scheduler/  tokenizer/  text_encoder/  unet/  vae/     SD-Turbo, diffusers layout
    DIR/noise_predictor_sd_turbo_v5.pth                                           InvSR's released predictor
    DIR/invsr-models.lock.json                                                    this module's lock file

So ``--base DIR`` is an ordinary diffusers folder and ``--predictor DIR`` (or the .pth in it) the
predictor. The lock file lists every file with its size, sha256 and source (hub repo, requested
revision, resolved commit). Loading a bundle checks sizes (cheap: catches truncation); ``verify``
hashes everything.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invsr_train.models.errors import ModelLoadError
from invsr_train.models.files import atomic_write, sha256_file

logger = logging.getLogger(__name__)

LOCK_NAME = "invsr-models.lock.json"
LOCK_FORMAT = 1


@dataclass
class LockedFile:
    """One file of a bundle: path relative to the bundle, size in bytes, sha256, and the source it came from."""

    path: str
    size: int
    sha256: str
    source: str


@dataclass
class Lock:
    """The lock file's content: ``sources`` maps a role (``base`` / ``predictor``) to repo, revision, commit."""

    files: list[LockedFile]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = ""
    format: int = LOCK_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "created": self.created,
            "sources": self.sources,
            "files": [vars(f) for f in sorted(self.files, key=lambda f: f.path)],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Lock:
        return cls(
            files=[LockedFile(**f) for f in d["files"]],
            sources=dict(d.get("sources", {})),
            created=str(d.get("created", "")),
            format=int(d["format"]),
        )


class BundleError(ModelLoadError):
    """A bundle is incomplete, corrupt or has no usable lock file (one line, naming the file)."""


def is_bundle(folder: str | Path) -> bool:
    """True for a folder holding a lock file."""
    return (Path(folder) / LOCK_NAME).is_file()


def write_lock(folder: Path, lock: Lock) -> Path:
    """Write the lock file atomically (temp file + rename): a crash leaves the old lock or none, never half."""
    lock.created = lock.created or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = folder / LOCK_NAME
    atomic_write(path, lambda f: f.write(json.dumps(lock.to_dict(), indent=1).encode("utf-8") + b"\n"))
    return path


def read_lock(folder: Path) -> Lock:
    """Parse a bundle's lock file, or a one-line BundleError."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        raise BundleError(f"{folder}: no {LOCK_NAME}: not a bundle from invsr-models download")
    try:
        lock = Lock.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{path}: unreadable lock file ({type(e).__name__}: {e}); run invsr-models download again") from e
    if lock.format > LOCK_FORMAT:
        raise BundleError(f"{path}: lock format {lock.format} is newer than this invsr-trt reads ({LOCK_FORMAT}): upgrade")
    return lock


def check_sizes(folder: Path) -> Lock:
    """Cheap load-time check: every locked file exists with its locked size (truncation, missing files)."""
    lock = read_lock(folder)
    for f in lock.files:
        problem = _size_problem(folder, f)
        if problem:
            raise BundleError(f"bundle {folder}: {problem}: run invsr-models verify {folder}, then download again")
    return lock


def _size_problem(folder: Path, f: LockedFile) -> str | None:
    path = folder / f.path
    if not path.is_file():
        return f"{f.path} is missing"
    size = path.stat().st_size
    return None if size == f.size else f"{f.path} is {size} bytes, the lock file says {f.size}"


def verify(folder: Path, progress: Callable[[int], Any] | None = None) -> Lock:
    """Full check: every locked file present, of its size and sha256. Raises BundleError naming the first bad file."""
    folder = Path(folder)
    lock = read_lock(folder)
    for f in lock.files:
        problem = _size_problem(folder, f)
        if problem is None:
            digest = sha256_file(folder / f.path, progress)
            if digest != f.sha256:
                problem = f"{f.path} has sha256 {digest[:12]}..., the lock file says {f.sha256[:12]}..."
        elif progress is not None:
            progress(f.size)  # keep a byte-counting progress bar honest
        if problem:
            raise BundleError(f"bundle {folder}: {problem}: download it again (invsr-models download --out {folder})")
    logger.info("bundle %s: %d files verified", folder, len(lock.files))
    return lock


def total_bytes(lock: Lock) -> int:
    """Bytes of all locked files (for progress bars)."""
    return sum(f.size for f in lock.files)
