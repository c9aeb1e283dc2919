"""The engine folder's manifest: the contract between `invsr-export` and the runtime.

`manifest.json` says what each graph file is (inputs, outputs, shapes, dtypes, sha256), how it was built
(provenance) and how well it matched the PyTorch reference (validation). Readers refuse a manifest they
cannot honour with one line that names the field and says how to rebuild: `load_manifest` checks the
whole file against one schema (`FIELDS`, rules from `schema`), then confines every file it names to the
folder and verifies their sha256 digests (`folder_guard`), before any image is touched. Writers replace it atomically.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .schema import (Rule, SchemaError, dictionary, digest, file_name, integer, list_of, mapping_of, number, one_of,
                     record, text)
from .folder_guard import ManifestError, check_external_data, read_float_npy, resolve_inside, verify_file
from .schedule import MAX_STEPS, ScheduleError, resolve_timesteps
from .tempfiles import atomic_write

__all__ = ["BACKENDS", "COMPONENTS", "ComponentSpec", "FORMAT_VERSION", "GRAPH_IO", "MANIFEST_NAME", "Manifest",
           "ManifestError", "PRECISIONS", "TensorSpec", "load_manifest", "parse_manifest", "read_prompt_embeds"]

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
COMPONENTS = ("vae_encoder", "predictor", "unet", "vae_decoder")
BACKENDS = ("onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8", "fp8")
#: The graph contract (docs/INTERFACES.md): input and output names of each component.
GRAPH_IO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "vae_encoder": (("lr", "noise"), ("latent_lr",)),
    "predictor": (("lr", "timestep", "noise", "latent_lr", "sigma"), ("latent",)),
    "unet": (("latent", "timestep", "sigma", "sigma_next", "encoder_hidden_states"), ("latent_next",)),
    "vae_decoder": (("latent",), ("image",)),
}
#: A manifest is a few hundred kB at most (1000 alphas, validation numbers); anything larger is refused unread.
MAX_MANIFEST_BYTES = 16 << 20
REBUILD = "rebuild it with `invsr-export --out DIR`"
SCALE = 4
LATENT_CHANNELS = 4
#: The LR tile must give a latent divisible by 8 (the UNet downsamples it 3 times): T/2 % 8 == 0.
TILE_MULTIPLE = 16
#: Largest LR tile: export memory grows with the tile's 4th power (self-attention over (T/2)^2 latent
#: positions); at 256 the UNet's first attention already holds 16x what it does at InvSR's 128.
MAX_TILE = 256
#: Largest engine batch: the graphs are traced (and validated) with the whole batch, so export memory
#: grows with it; invsr-run's --tile-batch runs more tiles per round with any engine batch.
MAX_BATCH = 32
MAX_EMBED_DIM = 8192
PROMPT_TOKENS = 77
NUM_TRAIN_TIMESTEPS = 1000
KNOWN_DTYPES = ("float32", "float16", "int32", "int64")
GRAPH_SUFFIX = {"onnxruntime": ".onnx", "tensorrt": ".plan"}


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

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "TensorSpec":
        return TensorSpec(name=d["name"], shape=list(d["shape"]), dtype=d.get("dtype", "float32"))


@dataclass(frozen=True)
class ComponentSpec:
    """One graph file of the folder, its interface and digests (`external_data`: ONNX weight files the
    graph names, relative to it -> sha256)."""

    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    sha256: str = ""
    external_data: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "ComponentSpec":
        return ComponentSpec(
            file=d["file"],
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            sha256=d.get("sha256", ""),
            external_data=dict(d.get("external_data", {})),
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
    prompt_embeds_sha256: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    validation: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def latent_tile(self) -> int:
        """Latent size of one tile (the VAE downsamples 8x the x`scale` output)."""
        return self.tile * self.scale // 8

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write manifest.json into `folder` atomically."""
        text = json.dumps(self.to_dict(), indent=1).encode("utf-8")
        return atomic_write(Path(folder) / MANIFEST_NAME, lambda fh: fh.write(text))


# ------------------------------------------------------------------------------------------ schema
def _alphas(value: Any, field: str) -> None:
    """1000 cumulative alphas, each in (0, 1), strictly decreasing (the DDPM noise schedule)."""
    list_of(number(0.0, 1.0, open_lo=True, open_hi=True), NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS)(value, field)
    for i, (a, b) in enumerate(zip(value, value[1:])):
        if not b < a:
            raise SchemaError(f"{field}[{i + 1}]", f"must be below the previous value (strictly decreasing), got {b}")


def _step_count(value: Any, field: str) -> None:
    if value not in {str(k) for k in range(1, MAX_STEPS + 1)}:
        raise SchemaError(f"{field}.{value}", f"is not a step count: keys must be \"1\"..\"{MAX_STEPS}\"")


def _timesteps(value: Any, field: str) -> None:
    """One default schedule: as many valid timesteps as its key says (strictly decreasing, 1..250)."""
    count = int(field.rsplit(".", 1)[1])
    list_of(integer(1, 10**6), count, count)(value, field)
    try:
        resolve_timesteps(count, value)
    except ScheduleError as exc:
        raise SchemaError(field, f"is not a valid schedule ({exc})") from None


_TENSOR = record({"name": (True, text(256)),
                    "shape": (True, list_of(integer(1, 1 << 20), 1, 8)),
                    "dtype": (False, one_of(*KNOWN_DTYPES))})
_COMPONENT = record({"file": (True, file_name),
                       "inputs": (True, list_of(_TENSOR, 1, 16)),
                       "outputs": (True, list_of(_TENSOR, 1, 16)),
                       "sha256": (True, digest),
                       "external_data": (False, mapping_of(file_name, digest))})


def _components(value: Any, field: str) -> None:
    """Exactly the four graphs, each a _COMPONENT."""
    dictionary(value, field)
    if set(value) != set(COMPONENTS):
        raise SchemaError(field, f"must hold exactly {', '.join(COMPONENTS)}, got {', '.join(map(str, value)) or 'none'}")
    for name in COMPONENTS:
        _COMPONENT(value[name], f"{field}.{name}")


#: The schema of manifest.json: every top-level field, (required, rule). Unknown keys are ignored.
FIELDS: dict[str, tuple[bool, Rule]] = {
    "format_version": (True, integer(1, FORMAT_VERSION)),
    "backend": (True, one_of(*BACKENDS)),
    "precision": (True, one_of(*PRECISIONS)),
    "tile": (True, integer(TILE_MULTIPLE, MAX_TILE, TILE_MULTIPLE)),
    "batch": (True, integer(1, MAX_BATCH)),
    "scale": (False, one_of(SCALE)),
    "latent_channels": (False, one_of(LATENT_CHANNELS)),
    "scaling_factor": (False, number(0.0, 100.0, open_lo=True)),
    "alphas_cumprod": (True, _alphas),
    "default_timesteps": (True, mapping_of(_step_count, _timesteps)),
    "prompt": (False, text(100_000)),
    "prompt_embeds": (True, file_name),
    "prompt_embeds_sha256": (True, digest),
    "components": (True, _components),
    "provenance": (False, dictionary),
    "validation": (False, dictionary),
}


def contract_shapes(batch: int, tile: int, embed_dim: int) -> dict[str, dict[str, list[int]]]:
    """Shape of every contract tensor of every graph for one (batch, tile, prompt width)."""
    b, t, n = batch, tile, tile * SCALE // 8
    lat = [b, LATENT_CHANNELS, n, n]
    return {
        "vae_encoder": {"lr": [b, 3, t, t], "noise": lat, "latent_lr": lat},
        "predictor": {"lr": [b, 3, t, t], "timestep": [b], "noise": lat, "latent_lr": lat, "sigma": [b], "latent": lat},
        "unet": {"latent": lat, "timestep": [b], "sigma": [b], "sigma_next": [b],
                 "encoder_hidden_states": [b, PROMPT_TOKENS, embed_dim], "latent_next": lat},
        "vae_decoder": {"latent": lat, "image": [b, 3, SCALE * t, SCALE * t]},
    }


def _embed_dim(unet_inputs: list[dict]) -> int:
    """D of the UNet's encoder_hidden_states [batch, 77, D] (the prompt embedding's width)."""
    for i, spec in enumerate(unet_inputs):
        if spec["name"] == "encoder_hidden_states":
            if not 1 <= spec["shape"][-1] <= MAX_EMBED_DIM:
                raise SchemaError(f"components.unet.inputs[{i}].shape", f"must end in D in 1..{MAX_EMBED_DIM}")
            return spec["shape"][-1]
    raise SchemaError("components.unet.inputs", "must include encoder_hidden_states")


def _check_graphs(raw: dict) -> None:
    """Graph files match the backend; names are the contract's; shapes match tile, batch and scale."""
    suffix = GRAPH_SUFFIX[raw["backend"]]
    shapes = contract_shapes(raw["batch"], raw["tile"], _embed_dim(raw["components"]["unet"]["inputs"]))
    for name in COMPONENTS:
        spec, where = raw["components"][name], f"components.{name}"
        if not spec["file"].endswith(suffix):
            raise SchemaError(f"{where}.file", f"must be a {suffix} file for backend {raw['backend']!r}, got {spec['file']!r}")
        if suffix != ".onnx" and spec.get("external_data"):
            raise SchemaError(f"{where}.external_data", "must be empty: only .onnx graphs have external data")
        want_in, want_out = GRAPH_IO[name]
        for kind, want, exact in (("inputs", want_in, True), ("outputs", want_out, False)):
            names = [t["name"] for t in spec[kind]]
            if len(set(names)) != len(names) or (set(names) != set(want) if exact else not set(want) <= set(names)):
                raise SchemaError(f"{where}.{kind}", f"must {'be' if exact else 'include'} {list(want)}, got {names}")
            for i, t in enumerate(spec[kind]):
                expected = shapes[name].get(t["name"])
                if expected is not None and t["shape"] != expected:
                    raise SchemaError(f"{where}.{kind}[{i}].shape", f"must be {expected} for batch "
                                        f"{raw['batch']} and tile {raw['tile']}, got {t['shape']}")


# ----------------------------------------------------------------------------------------- reading
def _read_json(folder: Path) -> Any:
    """manifest.json's parsed JSON: confined to the folder, size-capped, strict JSON (no NaN / Infinity)."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise ManifestError(f"{folder}: not a folder; pass an engine folder written by invsr-export")
    if not os.path.lexists(path):
        raise ManifestError(f"{folder}: not an engine folder (no {MANIFEST_NAME}); {REBUILD}")
    real = resolve_inside(folder, MANIFEST_NAME, MANIFEST_NAME)

    def refuse_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        with open(real, "rb") as fh:
            data = fh.read(MAX_MANIFEST_BYTES + 1)
        if len(data) > MAX_MANIFEST_BYTES:
            raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
        return json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
        raise ManifestError(f"{path}: unreadable manifest ({first}); {REBUILD}") from None


def parse_manifest(raw: Any, path: str | os.PathLike = MANIFEST_NAME) -> Manifest:
    """A Manifest from parsed JSON, checked against the schema; ManifestError naming the field otherwise."""
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: must hold a JSON object, got {type(raw).__name__}; {REBUILD}")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ManifestError(
            f"{path}: format {version} is newer than this runtime reads ({FORMAT_VERSION}); "
            f"upgrade invsr-trt or {REBUILD} with this version"
        )
    try:
        record(FIELDS)(raw, "")
        _check_graphs(raw)
    except SchemaError as exc:
        raise ManifestError(f"{path}: {exc}; {REBUILD}") from None
    d = dict(raw)
    d["components"] = {k: ComponentSpec.from_dict(v) for k, v in d["components"].items()}
    known = set(Manifest.__dataclass_fields__)
    return Manifest(**{k: v for k, v in d.items() if k in known})


def verify_folder(folder: str | os.PathLike, manifest: Manifest) -> None:
    """Every file the runtime will open, confined to `folder` and matching the manifest's sha256 digests:
    the graphs, the external-data files the ONNX graphs name, the prompt embedding (also its contents)."""
    for name, spec in manifest.components.items():
        graph = verify_file(folder, spec.file, spec.sha256, f"components.{name}.file")
        if graph.suffix == ".onnx":
            check_external_data(folder, spec.file, graph, spec.external_data, f"components.{name}")
    verify_file(folder, manifest.prompt_embeds, manifest.prompt_embeds_sha256, "prompt_embeds")
    read_prompt_embeds(folder, manifest)


def read_prompt_embeds(folder: str | os.PathLike, manifest: Manifest) -> np.ndarray:
    """The fixed prompt's embedding: finite float32 [1, 77, D], D the UNet's encoder_hidden_states width."""
    unet = {t.name: t for t in manifest.components["unet"].inputs}
    width = unet["encoder_hidden_states"].shape[-1]
    return read_float_npy(folder, manifest.prompt_embeds, "prompt_embeds", (1, PROMPT_TOKENS, width))


def load_manifest(folder: str | os.PathLike, verify: bool = True) -> Manifest:
    """Read an engine folder's manifest and check it against the schema; with `verify` (the default) also
    confine every file it names to the folder and check their sha256 digests. ManifestError with a
    one-line fix otherwise.

    `verify=False` reads only manifest.json (for tools that inspect or replace a folder, never to run it).
    """
    folder = Path(folder)
    manifest = parse_manifest(_read_json(folder), folder / MANIFEST_NAME)
    if verify:
        verify_folder(folder, manifest)
    return manifest
