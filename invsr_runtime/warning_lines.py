"""Python warnings as one `warning: <subject>: <message>` line each, for every command-line tool.

Pillow's DecompressionBombWarning, its broken-EXIF UserWarnings, numpy's RuntimeWarnings and the like
would otherwise reach stderr raw (file name of the library, line number, source line). Inside
`warnings_as_lines(subject)` each warning is written as one line naming what was being worked on;
contexts nest, the innermost subject wins. Which warnings are shown (filters) is not changed.
"""
from __future__ import annotations

import contextlib
import sys
import warnings
from typing import Callable, Iterator

WriteFn = Callable[[str], None]


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
        out(warning_line(message, subject))

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield
