"""The engine folder's manifest: the contract between `invsr-export` and the runtime.

`manifest.json` says what each graph file is (inputs, outputs, shapes, dtypes), how it was built
(provenance) and how well it matched the PyTorch reference (validation). Readers refuse a manifest they
cannot honour with one line that says how to rebuild. Writers replace it atomically.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPONENTS = ("vae_encoder", "predictor", "unet", "vae_decoder")
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")


class ManifestError(ValueError):
    """The folder is not a usable engine folder; the message says why and how to fix it."""


@dataclass(frozen=True)
class TensorRTBuild:
    """Which TensorRT and GPU built a folder's engines: the `tensorrt` record of the provenance.

    `invsr-export` writes it once (`provenance["tensorrt"]`, with its engine-cache details beside these
    keys); the TensorRT backend reads it back through `from_provenance`, the one reader.
    """

    tensorrt_version: str | None
    gpu_name: str | None = None
    compute_capability: str | None = None

    #: The provenance key that holds the record.
    KEY = "tensorrt"

    def to_dict(self) -> dict[str, Any]:
        return {"tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability}

    @staticmethod
    def from_provenance(provenance: Mapping[str, Any]) -> "TensorRTBuild | None":
        """The record, or None when the folder was not built by TensorRT (no `tensorrt` record)."""
        record = provenance.get(TensorRTBuild.KEY)
        if not isinstance(record, Mapping):
            return None

        def text(key: str) -> str | None:
            value = record.get(key)
            return None if value in (None, "") else str(value)

        return TensorRTBuild(text("tensorrt_version"), text("gpu_name"), text("compute_capability"))


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input or output."""

    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass(frozen=True)
class ComponentSpec:
    """One graph file of the folder and its interface."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str = ""

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ComponentSpec":
        return ComponentSpec(
            file=d["file"],
            inputs=[TensorSpec(**t) for t in d["inputs"]],
            outputs=[TensorSpec(**t) for t in d["outputs"]],
            sha256=d.get("sha256", ""),
        )


@dataclass
class Manifest:
    """Everything the runtime needs to know about an engine folder."""

    backend: str
    precision: str
    tile: int
    batch: int
    components: dict[str, ComponentSpec]
    alphas_cumprod: list[float]
    default_timesteps: dict[str, list[int]]
    scale: int = 4
    latent_channels: int = 4
    scaling_factor: float = 0.18215
    prompt: str = ""
    prompt_embeds: str = "prompt_embeds.npy"
    provenance: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def latent_tile(self) -> int:
        """Latent size of one tile (the VAE downsamples 8x the x`scale` output)."""
        return self.tile * self.scale // 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Manifest":
        d = dict(d)
        d["components"] = {k: ComponentSpec.from_dict(v) for k, v in d["components"].items()}
        known = set(Manifest.__dataclass_fields__)
        return Manifest(**{k: v for k, v in d.items() if k in known})

    def save(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json into `folder` atomically."""
        path = Path(folder) / MANIFEST_NAME
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".part", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.to_dict(), fh, indent=1)
        os.replace(tmp, path)
        return path


def load_manifest(folder: str | os.PathLike) -> Manifest:
    """Read and check an engine folder's manifest; ManifestError with a one-line fix otherwise."""
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    rebuild = "rebuild it with `invsr-export --out DIR`"
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder; pass an engine folder written by invsr-export")
    if not path.is_file():
        raise ManifestError(f"{folder}: not an engine folder (no {MANIFEST_NAME}); {rebuild}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc}); {rebuild}") from None
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if not isinstance(version, int):
        raise ManifestError(f"{path}: no format_version; {rebuild}")
    if version > FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format {version} is newer than this runtime reads ({FORMAT_VERSION}); "
            f"upgrade invsr-trt or {rebuild} with this version"
        )
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: malformed manifest (missing or bad field {exc}); {rebuild}") from None
    missing = [c for c in COMPONENTS if c not in manifest.components]
    if missing:
        raise ManifestError(f"{path}: components missing: {', '.join(missing)}; {rebuild}")
    for name in COMPONENTS:
        if not (folder / manifest.components[name].file).is_file():
            raise ManifestError(f"{folder}: {manifest.components[name].file} listed in the manifest is missing; {rebuild}")
    if not (folder / manifest.prompt_embeds).is_file():
        raise ManifestError(f"{folder}: {manifest.prompt_embeds} is missing; {rebuild}")
    return manifest
