"""Opening an engine folder without trusting anything outside it, and without running unverified bytes.

An engine folder may come from anywhere (a download, a colleague, a shared disk). Its manifest names
files; those names are untrusted input. This module is the one place that turns them into paths:
- `resolve_inside` confines a name to the folder: absolute names, `..` that climbs out and symlinks that
  lead out are refused *lexically*, component by component, so nothing outside the folder is ever
  opened or even stat-ed, and no message can tell whether an outside path exists;
- `verify_file` checks a file against the sha256 digest the manifest records, streaming the bytes.
  A verified (device, inode, size, mtime_ns, ctime_ns, digest) is remembered under the cache root
  (`cache_root()/verified`), so opening the same unchanged folder again costs a few stats;
- `check_external_data` confines and verifies the weight files an ONNX graph names;
- `read_float_npy` reads an array only after checking its .npy header (no pickles, no forged shapes).
`manifest.load_manifest` applies these to every file a manifest names. Refusals are ManifestError: one
line naming the manifest field and the fix (exit 2 in invsr-run). Paths are checked at open time; a
folder changed *while* it is being opened is out of scope.
"""
from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import re
import stat
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from .cache import cache_root
from .onnx_refs import OnnxFormatError, external_data_locations

logger = logging.getLogger(__name__)

REBUILD = "rebuild it with `invsr-export --out DIR`"
MAX_SYMLINKS = 40
CHUNK = 1 << 22  # 4 MiB reads: hashlib releases the GIL on each, the page cache streams ahead
_verified_here: set[str] = set()  # this process's verified keys (when the cache root is not writable)


class ManifestError(ValueError):
    """The folder is not a usable engine folder; the message says why and how to fix it (exit 2).

    Defined here, re-exported by `manifest` (where callers import it from): both layers refuse with it.
    """


def _shown(name: object) -> str:
    """A manifest-supplied name as it may appear in a message: repr-escaped, at most 80 characters."""
    text = repr(name)
    return text if len(text) <= 80 else text[:77] + "..."


# ---------------------------------------------------------------------------------------- paths
def resolve_inside(folder: str | os.PathLike, name: object, field: str) -> Path:
    """The real path of the regular file `name` (relative, `/`-separated) inside `folder`.

    Symlinks are followed only while they stay inside the folder's real path. Never touches a path
    outside it. ManifestError naming `field` when `name` is not a plain relative name, leads outside,
    is missing or is not a regular file.
    """
    root = os.path.realpath(folder)
    where = f"{folder}: {field} {_shown(name)}"
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ManifestError(f"{where} is not a file name; {REBUILD}")
    if os.path.isabs(name):
        raise ManifestError(f"{where} is an absolute path; an engine folder may only name files inside itself; {REBUILD}")
    if ".." in name.split("/"):
        raise ManifestError(f"{where} leads outside the engine folder (`..`); {REBUILD}")
    pending = list(reversed(name.split("/")))  # components still to walk (a link's target is pushed back)
    parts: list[str] = []  # the real, link-free components walked so far, below the root
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":  # only from a symlink's target: physical parent, as the kernel does
            if not parts:
                raise ManifestError(f"{where} leads outside the engine folder; {REBUILD}")
            parts.pop()
            continue
        current = os.path.join(root, *parts, part)
        try:
            info = os.lstat(current)
        except OSError:
            raise ManifestError(f"{where} is missing from the folder; {REBUILD}") from None
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                raise ManifestError(f"{where}: too many symlinks; {REBUILD}")
            target = os.readlink(current)
            if os.path.isabs(target):  # restart from the root, if the target is under it at all
                if not target.startswith(root + os.sep):
                    raise ManifestError(f"{where} is a symlink that leads outside the engine folder; {REBUILD}")
                parts, target = [], target[len(root) + 1:]
            pending.extend(reversed(target.split("/")))
            continue
        if pending and not stat.S_ISDIR(info.st_mode):
            raise ManifestError(f"{where} is missing from the folder; {REBUILD}")
        parts.append(part)
    path = os.path.join(root, *parts)
    if not parts or not stat.S_ISREG(os.lstat(path).st_mode):
        raise ManifestError(f"{where} is not a regular file; {REBUILD}")
    return Path(path)


# -------------------------------------------------------------------------------------- hashing
def _sha256_stream(fh: BinaryIO, chunk: int = CHUNK) -> str:
    digest = hashlib.sha256()
    while block := fh.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """sha256 of one file's bytes, read in chunks (constant memory whatever the size)."""
    with open(path, "rb") as fh:
        return _sha256_stream(fh, chunk)


def _verified_key(info: os.stat_result, expected: str) -> str:
    """Names one verified file version: any write, replace or touch changes ctime_ns (kernel-set)."""
    fields = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns, expected)
    return hashlib.sha256(":".join(map(str, fields)).encode()).hexdigest()


def _is_verified(key: str) -> bool:
    try:
        return key in _verified_here or (cache_root() / "verified" / key).is_file()
    except OSError:  # an unreadable cache only costs a re-hash
        return False


def _remember(key: str) -> None:
    _verified_here.add(key)
    folder = cache_root() / "verified"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / key).touch()
    except OSError as exc:  # a read-only cache only costs a re-hash next time
        logger.debug("cannot record a verified digest in %s: %s", folder, exc)


def verify_file(folder: str | os.PathLike, name: object, expected: object, field: str) -> Path:
    """Confine `name` to `folder`, then check its sha256 against `expected`; the real path if it matches."""
    path = resolve_inside(folder, name, field)
    if not (isinstance(expected, str) and re.fullmatch(r"[0-9a-f]{64}", expected)):
        raise ManifestError(f"{folder}: the manifest records no sha256 for {field} {_shown(name)}; {REBUILD}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        with os.fdopen(os.open(path, flags), "rb") as fh:
            info = os.fstat(fh.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ManifestError(f"{folder}: {field} {_shown(name)} is not a regular file; {REBUILD}")
            key = _verified_key(info, expected)
            if _is_verified(key):
                return path
            actual = _sha256_stream(fh)
    except OSError as exc:
        raise ManifestError(f"{folder}: {field} {_shown(name)} cannot be read ({exc.strerror or exc}); {REBUILD}") from None
    if actual != expected:
        raise ManifestError(f"{folder}: {field} {_shown(name)} does not match the sha256 the manifest records "
                     f"(corrupted or replaced); {REBUILD}")
    _remember(key)
    return path


# ------------------------------------------------------------------------------ what files hold
def check_external_data(folder: str | os.PathLike, file: str, graph: Path, recorded: Mapping[str, str],
                        field: str) -> None:
    """Every external-data file the ONNX graph names is inside the folder and recorded with its sha256
    (`recorded`: location -> digest), and every recorded one matches.

    ONNX Runtime looks for a location beside the graph path it is given (`folder/<file>`), so a location
    is taken relative to the manifest's `file` name, not to wherever a symlink leads.
    """
    try:
        locations = external_data_locations(graph)
    except (OnnxFormatError, OSError, ValueError) as exc:
        raise ManifestError(f"{folder}: {field}.file is not a readable ONNX graph ({exc}); {REBUILD}") from None
    base = posixpath.dirname(file)
    for location in locations:
        resolve_inside(folder, posixpath.join(base, location), f"{field}.file's external data")
        if location not in recorded:
            raise ManifestError(f"{folder}: {field}.file's external data {_shown(location)} has no sha256 "
                                f"in {field}.external_data; {REBUILD}")
    for location, digest in recorded.items():
        verify_file(folder, posixpath.join(base, location), digest, f"{field}.external_data")


def read_float_npy(folder: str | os.PathLike, name: str, field: str, shape: tuple[int, ...]) -> np.ndarray:
    """A finite float array of exactly `shape` from the .npy file `name`, as float32.

    The header is checked before any data is read, so a forged shape cannot make us allocate, and
    pickles are never loaded.
    """
    path = resolve_inside(folder, name, field)
    where = f"{folder}: {field} {_shown(name)}"
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                           (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            have, _, dtype = read_header(fh)
            if dtype.kind != "f" or tuple(have) != tuple(shape):
                raise ValueError(f"holds {dtype} {list(have)}, expected float {list(shape)}")
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{where}: unusable ({exc}); {REBUILD}") from None
    if not np.isfinite(array).all():
        raise ManifestError(f"{where}: holds NaN or infinite values; {REBUILD}")
    return np.asarray(array, dtype=np.float32)
