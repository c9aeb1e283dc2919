"""Which files an ONNX graph's external data points to, read from the protobuf bytes, weights untouched.

ONNX Runtime opens every `location` an initializer (or a Constant's tensor, or a tensor of a subgraph)
names, relative to the graph file. Before it may, the engine-folder guard must know them all to keep
them inside the folder. The lean runtime does not depend on the `onnx` package, and loading a graph
with it would read the weights, so this walks the protobuf wire format itself: it visits only the
messages that can hold tensors (model -> graphs, functions, training info -> nodes -> attributes ->
tensors / sparse tensors / subgraphs) and skips every other field, `raw_data` included, by its length.
"""
from __future__ import annotations

import mmap
import os
from typing import Iterator

#: For each message kind, the fields that hold messages which can (transitively) hold a tensor.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},  # TensorProto.external_data: repeated StringStringEntryProto
    "entry": {},
}
_LEN, _VARINT, _FIXED64, _FIXED32 = 2, 0, 1, 5


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise OnnxFormatError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf: mmap.mmap | bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of one message; other fields skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            _, pos = _varint(buf, pos, end)
            continue
        if wire == _FIXED64:
            pos += 8
        elif wire == _FIXED32:
            pos += 4
        elif wire == _LEN:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise OnnxFormatError("a field runs past the end of its message (truncated file?)")
            yield number, pos, pos + length
            pos += length
            continue
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise OnnxFormatError("a field runs past the end of its message (truncated file?)")


def _entry(buf: mmap.mmap | bytes, start: int, end: int) -> tuple[bytes, bytes]:
    key = value = b""
    for number, a, b in _fields(buf, start, end):
        if number == 1:
            key = bytes(buf[a:b])
        elif number == 2:
            value = bytes(buf[a:b])
    return key, value


def locations_in(buf: mmap.mmap | bytes) -> list[str]:
    """Every external-data `location` in a serialized ModelProto, without duplicates."""
    found: list[str] = []
    stack = [("model", 0, len(buf))]
    while stack:
        kind, start, end = stack.pop()
        children = _CHILDREN[kind]
        for number, a, b in _fields(buf, start, end):
            child = children.get(number)
            if child == "entry":
                key, value = _entry(buf, a, b)
                if key == b"location":
                    try:
                        text = value.decode("utf-8")
                    except UnicodeDecodeError:
                        raise OnnxFormatError("an external-data location is not UTF-8") from None
                    if text not in found:
                        found.append(text)
            elif child is not None:
                stack.append((child, a, b))
    return found


def external_data_locations(path: str | os.PathLike) -> list[str]:
    """The external-data locations an ONNX file names (relative to its folder, as written in the file).

    Reads the file through a read-only memory map; weight bytes are skipped, never copied.
    OnnxFormatError when the file is not a well-formed protobuf.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise OnnxFormatError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return locations_in(buf)
