"""Temporary files and staging folders that a later run can recognise, and remove, once their owner died.

Every write of this project goes through a temporary name beside its target and a rename, so a target is
either the old version or the complete new one. A process killed with SIGKILL (or by the OOM killer, or a
power cut) cannot clean up, so the temporary name says who made it:

    .<stem>.invsr-<host>-<pid>-<start>-<random>.<kind>

`host` is a 4-hex hash of the host name (a folder on a network share may hold other machines' files,
whose owners cannot be checked from here: those are left alone), `pid` and `start` identify the owning
process (`start` is its start time in clock ticks from /proc, so a reused pid is told apart; 0 where
/proc is unavailable), `kind` is `part` (a file being written), `partial` (a staging folder) or `old`
(a folder moved aside while being replaced). `sweep(folder)` removes the entries of that exact pattern
whose owner is no longer alive; nothing else is ever touched. An `old` folder whose target is missing
(the process died between the two renames of a replace) is renamed back instead of deleted, so an
interruption never loses both versions.

The stem is shortened (prefix + hash) so that a temporary name always fits in NAME_MAX (255 bytes) when
the target's own name does.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
import socket
import stat
from pathlib import Path
from typing import BinaryIO, Callable

from .signals import deferred

logger = logging.getLogger(__name__)

__all__ = ["KINDS", "NAME_MAX", "atomic_write", "is_leftover", "new_staging_folder", "replace_folder", "sweep",
           "sweep_once", "temp_path"]

NAME_MAX = 255
KINDS = ("part", "partial", "old")
_MARKER = "invsr"
_PATTERN = re.compile(
    rf"^\.(?P<stem>.+)\.{_MARKER}-(?P<host>[0-9a-f]{{4}})-(?P<pid>[1-9][0-9]{{0,9}})-(?P<start>[0-9a-z]{{1,13}})"
    rf"-(?P<rand>[0-9a-z]{{6}})\.(?P<kind>{'|'.join(KINDS)})$"
)
_HASH_LEN = 8  # hex digits of the stem hash that replaces a shortened stem's tail
_swept: set[tuple[int, str]] = set()


# ----------------------------------------------------------------------------------------- identity
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:4]


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, field 22 of /proc/PID/stat); None if unknown."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    try:
        return int(raw[raw.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def _owner() -> str:
    """`<host>-<pid>-<start>` of this process (computed per call: a forked child is another owner)."""
    pid = os.getpid()
    return f"{_host_tag()}-{pid}-{_base36(_start_ticks(pid) or 0)}"


def _alive(pid: int, start: str) -> bool:
    """Whether the process that made a temporary name still runs (a reused pid does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    except OSError:
        return True  # cannot tell: keep the entry
    if start == "0":
        return True
    now = _start_ticks(pid)
    return now is None or _base36(now) == start


# ------------------------------------------------------------------------------------------- naming
def _short_stem(name: str, budget: int) -> str:
    """`name` if it fits in `budget` bytes, else a prefix of it + `~` + a hash of the whole name."""
    if len(os.fsencode(name)) <= budget:
        return name
    digest = hashlib.sha1(os.fsencode(name)).hexdigest()[:_HASH_LEN]
    prefix = name
    while prefix and len(os.fsencode(prefix)) > budget - _HASH_LEN - 1:
        prefix = prefix[:-1]
    return f"{prefix}~{digest}"


def temp_path(target: str | os.PathLike, kind: str = "part") -> Path:
    """A fresh temporary path beside `target` for `kind` (part | partial | old); fits in NAME_MAX."""
    if kind not in KINDS:
        raise ValueError(f"unknown temporary kind {kind!r}: use one of {', '.join(KINDS)}")
    target = Path(target)
    tail = f".{_MARKER}-{_owner()}-{_base36(secrets.randbits(30)).rjust(6, '0')[-6:]}.{kind}"
    budget = NAME_MAX - 1 - len(tail.encode())
    return target.with_name(f".{_short_stem(target.name, budget)}{tail}")


def is_leftover(name: str) -> bool:
    """Whether `name` has the exact form of one of this project's temporary names."""
    return _PATTERN.match(name) is not None


# ------------------------------------------------------------------------------------------ writing
def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], *, durable: bool = False) -> Path:
    """Write `path` through `write(fileobj)` into a temporary file beside it, then rename it into place.

    The file gets the umask's usual mode (0666 & ~umask); `durable` fsyncs before the rename (checkpoints).
    Stale leftovers of dead runs in the folder are removed first (once per folder and process). A signal
    that arrives during the write is raised once the file is in place (`signals.deferred`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_once(path.parent)
    tmp = temp_path(path, "part")
    with deferred():
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                if durable:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return path


def new_staging_folder(target: str | os.PathLike) -> Path:
    """A fresh empty folder beside `target` (mode 0777 & ~umask), after sweeping the folder's leftovers.

    The caller fills it, then moves it into place (`replace_folder`) or removes it on failure.
    """
    target = Path(target)
    sweep(target.parent)
    stage = temp_path(target, "partial")
    stage.mkdir(mode=0o777)
    return stage


def replace_folder(stage: Path, target: Path) -> None:
    """Move `stage` to `target`; an existing `target` is renamed aside first and deleted last.

    Killed between the renames, the aside copy is renamed back by the next `sweep` of the folder.
    """
    old = None
    if _exists(target):
        old = temp_path(target, "old")
        os.replace(target, old)
    try:
        os.replace(stage, target)
    except BaseException:
        if old is not None and not _exists(target):
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ cleanup
def sweep_once(folder: str | os.PathLike) -> None:
    """`sweep(folder)` the first time this process writes into it."""
    key = (os.getpid(), os.path.abspath(folder))
    if key not in _swept:
        _swept.add(key)
        sweep(folder)


def sweep(folder: str | os.PathLike) -> list[Path]:
    """Remove this host's temporary entries in `folder` whose owner is dead; returns what was removed.

    Only names of the exact pattern are considered, only files for `part` and real folders (not links)
    for `partial` / `old`. Errors (permissions, races with another sweeper) are logged and skipped.
    """
    folder = Path(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    host = _host_tag()
    removed = []
    for name in names:
        m = _PATTERN.match(name)
        if m is None or m["host"] != host or _alive(int(m["pid"]), m["start"]):
            continue
        try:
            if _remove(folder / name, m):
                removed.append(folder / name)
        except OSError as exc:
            logger.warning("could not remove the stale %s: %s", folder / name, exc.strerror or exc)
    return removed


def _remove(path: Path, m: re.Match) -> bool:
    """Delete one stale entry (an `old` folder whose target is gone is renamed back); False if kept."""
    mode = os.lstat(path).st_mode
    if m["kind"] == "part":
        if not stat.S_ISREG(mode):
            return False
        path.unlink()
    elif not stat.S_ISDIR(mode):
        return False
    elif m["kind"] == "old" and not _exists(path.with_name(m["stem"])):
        return _restore(path, m["stem"])
    else:
        shutil.rmtree(path)
    logger.info("removed %s, left by a run that no longer exists (pid %s)", path, m["pid"])
    return True


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _restore(old: Path, stem: str) -> bool:
    """Rename an `old` folder whose replacement was interrupted back to its name.

    A shortened stem (`~hash`) does not name its target for sure: such a folder is kept and reported.
    """
    if re.search(rf"~[0-9a-f]{{{_HASH_LEN}}}$", stem):
        logger.warning("%s holds a folder whose replacement was interrupted: rename it back by hand", old)
        return False
    os.replace(old, old.with_name(stem))
    logger.warning("restored %s: its replacement was interrupted", old.with_name(stem))
    return True
