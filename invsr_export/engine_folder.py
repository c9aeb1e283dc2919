"""Writing an engine folder safely: stage in a hidden temp folder beside --out, rename at the end.

A failed or interrupted export removes its staging folder, so --out is either absent, the previous
folder (kept unless --force), or complete. `--force` replaces only an engine folder an export wrote
(`check_replaceable`); staging folders carry their owner's pid, so a later export removes those of a
killed one (`invsr_runtime.tempfiles`). The manifest follows `invsr_runtime.manifest` (the format's
single source of truth).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import posixpath
import shutil
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from invsr_runtime import tempfiles
from invsr_runtime.folder_guard import sha256_file
from invsr_runtime.manifest import COMPONENTS, MANIFEST_NAME, ComponentSpec, Manifest, TensorSpec
from invsr_runtime.onnx_refs import external_data_locations
from invsr_runtime.tempfiles import is_leftover

logger = logging.getLogger(__name__)


class OutputError(RuntimeError):
    """--out cannot be written (exists without --force, unwritable, not a folder, not ours); one line."""


#: Everything an export leaves in an engine folder (besides this project's temporary names): what
#: `--force` may delete. A folder holding anything else is not replaced.
EXPORT_FILES = frozenset(
    {MANIFEST_NAME, "prompt_embeds.npy"}
    | {f"{name}{suffix}" for name in COMPONENTS for suffix in (".onnx", ".onnx.data", ".plan")}
)


def check_output(out: Path, force: bool, inputs: Iterable[Path | None] = ()) -> None:
    """Refuse early: --out an existing folder without --force, or (with it) one that is not an engine
    folder; --out a filesystem root, the home folder, or a folder holding the working directory or an
    input; a parent we cannot create or write into."""
    out = Path(out).expanduser().resolve()
    _check_not_precious(out, inputs)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a folder: choose another --out")
    if out.exists() and not force:
        raise OutputError(f"{out} already exists: pass --force to replace it, or choose another --out")
    if out.exists():
        check_replaceable(out)
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {parent} ({exc.strerror or exc}): choose a writable --out") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{parent} is not writable: choose a writable --out")


def _check_not_precious(out: Path, inputs: Iterable[Path | None]) -> None:
    """--out (resolved) may not be a filesystem root, the home folder, or hold the cwd or an input."""
    if out.parent == out:
        raise OutputError(f"--out {out} is a filesystem root: choose a new folder for the engines")
    if out == Path.home().resolve():
        raise OutputError(f"--out {out} is your home folder: choose a new folder for the engines")
    for what, path in [("the working directory", Path.cwd())] + [("an input", p) for p in inputs if p]:
        path = Path(path).expanduser().resolve()
        if path == out or out in path.parents:
            raise OutputError(f"--out {out} holds {what} ({path}): choose a new folder for the engines")


def check_replaceable(out: Path) -> None:
    """`out` may be replaced only if it is an engine folder an export wrote, holding nothing else.

    The marker is a `manifest.json` of this format (an object with an integer `format_version` and a
    `components` object); every entry must be a plain file an export writes (`EXPORT_FILES`) or one
    of this project's temporary names. Anything else - a photo, a note, a subfolder, a link - may be
    the user's, so the folder is refused and nothing is deleted.
    """
    hint = "move them out or delete the folder yourself, or choose another --out"
    manifest = out / MANIFEST_NAME
    if not _is_our_manifest(manifest):
        raise OutputError(f"--force refused: {out} is not an engine folder written by invsr-export "
                          f"(no valid {MANIFEST_NAME}); nothing was deleted, choose another --out")
    foreign = sorted(e.name for e in os.scandir(out)
                     if not (e.is_file(follow_symlinks=False) and (e.name in EXPORT_FILES or is_leftover(e.name))))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise OutputError(f"--force refused: {out} holds {foreign[0]!r}{more}, which invsr-export does not write; "
                          f"nothing was deleted: {hint}")


def _is_our_manifest(path: Path) -> bool:
    if path.is_symlink() or not path.is_file():
        return False
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return (isinstance(raw, dict) and isinstance(raw.get("format_version"), int)
            and not isinstance(raw.get("format_version"), bool) and isinstance(raw.get("components"), dict))


@contextmanager
def staging(out: Path, force: bool, inputs: Iterable[Path | None] = ()) -> Iterator[Path]:
    """Yield a fresh staging folder beside `out`; on success it replaces `out`, on any failure it is removed.

    Leftovers of dead exports beside `out` are removed first (`invsr_runtime.tempfiles`).
    """
    out = Path(out).expanduser().resolve()
    check_output(out, force, inputs)
    try:
        stage = tempfiles.new_staging_folder(out)
    except OSError as exc:
        raise OutputError(f"cannot write into {out.parent} ({exc.strerror or exc}): choose a writable --out") from None
    try:
        yield stage
        _commit(stage, out, force)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _commit(stage: Path, out: Path, force: bool) -> None:
    """Rename `stage` to `out`; an existing `out` (only with force, only an engine folder) is moved
    aside first, then deleted (`tempfiles.replace_folder`)."""
    _default_permissions(stage)
    if out.exists() or out.is_symlink():
        if not force:
            raise OutputError(f"{out} appeared during the export: pass --force to replace it")
        check_replaceable(out)  # again: files may have been added while the export ran
    tempfiles.replace_folder(stage, out)


def _default_permissions(folder: Path) -> None:
    """Writers that use `tempfile` create private (0700/0600) entries; give everything the umask's usual modes."""
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
