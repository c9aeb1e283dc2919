"""Python warnings as one `warning: <subject>: <message>` line each, for every command-line tool.

Pillow's DecompressionBombWarning, its broken-EXIF UserWarnings, numpy's RuntimeWarnings and the like
would otherwise reach stderr raw (file name of the library, line number, source line). Inside
`warnings_as_lines(subject)` each warning is written as one line naming what was being worked on;
contexts nest, the innermost subject wins. Which warnings are shown (filters) is not changed.
A worker thread (e.g. the tile scheduler's decoding thread) names its subject with `thread_subject`,
which touches no global state: inside an active `warnings_as_lines`, its warnings carry that subject.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import warnings
from typing import Callable, Iterator

WriteFn = Callable[[str], None]
_local = threading.local()


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def warning_line(message: Warning | str, subject: str | None = None) -> str:
    """`warning: <subject>: <first line of the message>` (the subject left out when None)."""
    text = (str(message).strip().splitlines() or [type(message).__name__])[0]
    return f"warning: {subject}: {text}" if subject else f"warning: {text}"


@contextlib.contextmanager
def warnings_as_lines(subject: str | None = None, write: WriteFn | None = None) -> Iterator[None]:
    """Within the block, every displayed warning is written as one line by `write` (default: stderr)."""
    out = write or _stderr_line

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001 - warnings API
        out(warning_line(message, getattr(_local, "subject", None) or subject))

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


@contextlib.contextmanager
def thread_subject(subject: str) -> Iterator[None]:
    """This thread's warnings name `subject` (inside an active `warnings_as_lines`); each subject sees its
    own warnings again, as a fresh `warnings_as_lines` block would."""
    previous = getattr(_local, "subject", None)
    _local.subject = subject
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()  # "show once" starts afresh for this subject
    try:
        yield
    finally:
        _local.subject = previous
