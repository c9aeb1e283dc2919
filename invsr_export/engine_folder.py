"""Writing an engine folder safely: stage in a hidden temp folder beside --out, rename at the end.

A failed or interrupted export removes its staging folder, so --out is either absent, the previous
folder (kept unless --force), or complete. The manifest follows `invsr_runtime.manifest` (the format's
single source of truth).
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import posixpath
import shutil
import tempfile
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from invsr_runtime.folder_guard import sha256_file
from invsr_runtime.manifest import ComponentSpec, Manifest, TensorSpec
from invsr_runtime.onnx_refs import external_data_locations

logger = logging.getLogger(__name__)


class OutputError(RuntimeError):
    """--out cannot be written (exists without --force, unwritable, not a folder); one line."""


def check_output(out: Path, force: bool) -> None:
    """Refuse early: an existing --out without --force, or a parent we cannot create or write into."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder: choose another --out")
    if out.exists() and not force:
        raise OutputError(f"{out} already exists: pass --force to replace it, or choose another --out")
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {parent} ({exc.strerror or exc}): choose a writable --out") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent} is not writable: choose a writable --out")


@contextmanager
def staging(out: Path, force: bool) -> Iterator[Path]:
    """Yield a fresh staging folder beside `out`; on success it replaces `out`, on any failure it is removed."""
    out = Path(out).resolve()
    check_output(out, force)
    try:
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write into {out.parent} ({exc.strerror or exc}): choose a writable --out") from None
    try:
        yield stage
        _commit(stage, out, force)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _commit(stage: Path, out: Path, force: bool) -> None:
    """Rename `stage` to `out`; an existing `out` (only with force) is moved aside first, then deleted."""
    _default_permissions(stage)
    old = None
    if out.exists():
        if not force:
            raise OutputError(f"{out} appeared during the export: pass --force to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _default_permissions(folder: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the folder the umask's usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_prompt_embeds(folder: Path, embeds: np.ndarray, name: str = "prompt_embeds.npy") -> Path:
    """The fixed prompt's embedding as float32 [1, 77, D]."""
    arr = np.asarray(embeds, dtype=np.float32)
    arr = arr[None] if arr.ndim == 2 else arr
    path = Path(folder) / name
    np.save(path, arr)
    return path


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def tool_versions() -> dict[str, str | None]:
    """Versions of the tools that shaped the graphs."""
    return package_versions(("invsr-trt", "torch", "diffusers", "onnx", "onnxruntime", "onnxscript", "onnx-ir", "numpy"))


def component_spec(folder: Path, file: str, io: Any) -> ComponentSpec:
    """Manifest entry of one graph from its GraphSpec (inputs/outputs float32 at the boundary), with the
    sha256 of the graph file and of every external-data file it names (what the runtime verifies)."""
    copy = lambda specs: [TensorSpec(t.name, list(t.shape), t.dtype) for t in specs]  # noqa: E731
    path = Path(folder) / file
    names = external_data_locations(path) if path.suffix == ".onnx" else []
    base = posixpath.dirname(file)
    external = {name: sha256_file(Path(folder) / posixpath.join(base, name)) for name in names}
    return ComponentSpec(file=file, inputs=copy(io.inputs), outputs=copy(io.outputs), sha256=sha256_file(path),
                         external_data=external)


def build_manifest(
    *, backend: str, precision: str, tile: int, batch: int, base: Any, components: Mapping[str, ComponentSpec],
    default_timesteps: Mapping[int, tuple[int, ...]], prompt: str, prompt_embeds: Path, provenance: Mapping[str, Any],
    validation: Mapping[str, Any],
) -> Manifest:
    """The complete manifest (DESIGN.md's list) for a finished export."""
    return Manifest(
        backend=backend,
        precision=precision,
        tile=int(tile),
        batch=int(batch),
        components=dict(components),
        alphas_cumprod=[float(a) for a in np.asarray(base.alphas_cumprod, dtype=np.float64)],
        default_timesteps={str(k): list(v) for k, v in default_timesteps.items()},
        scale=4,
        latent_channels=4,
        scaling_factor=float(base.scaling_factor),
        prompt=prompt,
        prompt_embeds=Path(prompt_embeds).name,
        prompt_embeds_sha256=sha256_file(prompt_embeds),
        provenance={**provenance, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        validation=dict(validation),
    )
