"""A tiny declarative validator for parsed JSON: rules are functions `(value, field) -> None`.

`record({"tile": (True, integer(16, 2048, 16)), ...})` checks an object field by field; a violation raises
SchemaError naming the dotted field (`components.unet.inputs[0].shape`) and what was expected, so a
refusal can be one line. Knows nothing about engine folders (the manifest's table lives in manifest.py);
no dependency, since the lean runtime has no jsonschema.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Mapping

Rule = Callable[[Any, str], None]


class SchemaError(ValueError):
    """One field breaks its rule: `field` is its dotted path, `problem` what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"`{field}` {problem}")
        self.field, self.problem = field, problem


def got(value: Any) -> str:
    """`got <value> (<type>)`, the value shortened to 60 characters."""
    text = repr(value)
    return f"got {text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def integer(lo: int, hi: int, multiple: int = 1) -> Rule:
    """An int (not a bool) in lo..hi, a multiple of `multiple`."""
    def rule(value: Any, field: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi or value % multiple:
            every = f", a multiple of {multiple}" if multiple > 1 else ""
            raise SchemaError(field, f"must be an integer in {lo}..{hi}{every}, {got(value)}")
    return rule


def number(lo: float, hi: float, open_lo: bool = False, open_hi: bool = False) -> Rule:
    """A finite int or float (not a bool) between lo and hi, each end open or closed."""
    def rule(value: Any, field: str) -> None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not (lo < value if open_lo else lo <= value) or not (value < hi if open_hi else value <= hi):
            span = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
            raise SchemaError(field, f"must be a finite number in {span}, {got(value)}")
    return rule


def one_of(*choices: Any) -> Rule:
    """Equal to one of `choices` and of the same type (4, not 4.0 or "4")."""
    def rule(value: Any, field: str) -> None:
        if not any(type(value) is type(c) and value == c for c in choices):
            raise SchemaError(field, f"must be one of {', '.join(map(repr, choices))}, {got(value)}")
    return rule


def text(max_len: int) -> Rule:
    def rule(value: Any, field: str) -> None:
        if not isinstance(value, str) or len(value) > max_len:
            raise SchemaError(field, f"must be a string of at most {max_len} characters, {got(value)}")
    return rule


def digest(value: Any, field: str) -> None:
    """A sha256 hex digest."""
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
        raise SchemaError(field, f"must be a sha256 (64 lowercase hex digits), {got(value)}")


def file_name(value: Any, field: str) -> None:
    """A plain relative `/`-separated name: no absolute path, no `..`, no NUL or backslash."""
    if not isinstance(value, str) or not value or len(value) > 1024 or "\x00" in value or "\\" in value:
        raise SchemaError(field, f"must be a file name inside the engine folder, {got(value)}")
    if value.startswith("/") or ".." in value.split("/"):
        raise SchemaError(field, f"must name a file inside the engine folder (no absolute path, no `..`), {got(value)}")


def dictionary(value: Any, field: str) -> None:
    if not isinstance(value, dict):
        raise SchemaError(field, f"must be an object, {got(value)}")


def list_of(item: Rule, min_len: int = 0, max_len: int = 1 << 20) -> Rule:
    """A list of min_len..max_len items, each checked by `item` (as `field[i]`)."""
    def rule(value: Any, field: str) -> None:
        if not isinstance(value, list) or not min_len <= len(value) <= max_len:
            size = f"{min_len}" if min_len == max_len else f"{min_len}..{max_len}"
            raise SchemaError(field, f"must be a list of {size} items, {got(value)}")
        for i, v in enumerate(value):
            item(v, f"{field}[{i}]")
    return rule


def mapping_of(key: Rule, item: Rule) -> Rule:
    """An object whose keys pass `key` and whose values pass `item` (as `field.<key>`)."""
    def rule(value: Any, field: str) -> None:
        dictionary(value, field)
        for k, v in value.items():
            key(k, field)
            item(v, f"{field}.{k}")
    return rule


def record(fields: Mapping[str, tuple[bool, Rule]]) -> Rule:
    """An object with these fields (name: (required, rule)); other keys are ignored (forward compatible)."""
    def rule(value: Any, field: str) -> None:
        dictionary(value, field)
        for name, (required, check) in fields.items():
            where = f"{field}.{name}" if field else name
            if name in value:
                check(value[name], where)
            elif required:
                raise SchemaError(where, "is missing")
    return rule
