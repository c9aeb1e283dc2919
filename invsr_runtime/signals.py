"""SIGTERM and SIGHUP handled like Ctrl-C: the same clean-up, exit status 128 + signal number.

Python turns SIGINT into KeyboardInterrupt, so every `try/except BaseException` and `finally` of a
write (temporary files, staging folders) cleans up. SIGTERM (what `kill`, systemd, Docker and
Kubernetes send) and SIGHUP (a closed terminal) would kill the process on the spot instead, leaving its
temporary files behind. Within `terminate_like_interrupt()` all three raise `Terminated` (a
KeyboardInterrupt), so the same paths run; the CLIs then exit with `exit_code(exc)`: 130 for Ctrl-C,
143 for SIGTERM, 129 for SIGHUP.

An exception raised in the middle of a library's own write (torch.save's zip writer, say) can break
that library's clean-up and surface as another error, so writes run inside `deferred()`: a signal that
arrives there is held and raised when the write is complete (`invsr_runtime.tempfiles.atomic_write`).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Terminated", "deferred", "exit_code", "interruption", "terminate_like_interrupt"]

_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
_state = {"installed": 0, "deferring": 0, "pending": None}


class Terminated(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGINT, SIGTERM or SIGHUP)."""

    def __init__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        super().__init__("interrupted" if signum == signal.SIGINT else f"terminated by {name}")
        self.signum = signum


def exit_code(exc: BaseException) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def interruption(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt `exc` is, or that caused it (a library's clean-up failing on the way out)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _handler(signum: int, frame: object) -> None:
    if os.getpid() != _state["owner"]:  # a forked child (e.g. a data-loader worker): the default action
        signal.signal(signum, signal.SIG_DFL if signum != signal.SIGINT else signal.default_int_handler)
        os.kill(os.getpid(), signum)
        return
    if _state["deferring"]:
        _state["pending"] = _state["pending"] or signum
        return
    raise Terminated(signum)


@contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM / SIGHUP raise `Terminated` in the main thread (no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["owner"] = os.getpid()
    previous = {s: signal.signal(s, _handler) for s in _SIGNALS}
    _state["installed"] += 1
    try:
        yield
    finally:
        _state["installed"] -= 1
        for s, old in previous.items():
            signal.signal(s, old)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold a signal that arrives within the block (main thread, handler installed); raise it at the end."""
    if not _state["installed"] or threading.current_thread() is not threading.main_thread():
        yield
        return
    _state["deferring"] += 1
    try:
        yield
    finally:
        _state["deferring"] -= 1
        pending = _state["pending"]
        if pending is not None and not _state["deferring"]:
            _state["pending"] = None
            raise Terminated(pending)
