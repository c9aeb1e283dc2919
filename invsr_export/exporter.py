"""The export job: models -> four ONNX graphs -> precision pass -> validation -> (TensorRT engines) -> folder.

`run_export` is what `invsr-export` runs; it reports progress per component and stage through a callback
and returns an `ExportReport` for the summary table. Everything is written into a staging folder that
replaces --out only when the whole job (validation gate included) succeeded.
"""
from __future__ import annotations

import gc
import hashlib
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from invsr_runtime.cache import cache_root
from invsr_runtime.manifest import BACKENDS, COMPONENTS, MAX_BATCH, MAX_TILE, PRECISIONS, TILE_MULTIPLE, TensorRTBuild
from invsr_runtime.schedule import DEFAULT_TIMESTEPS

from . import engine_folder, graph_rewrites, tensorrt_build
from .onnx_export import DEFAULT_OPSET, MIN_OPSET, export_module, graph_files, max_opset, onnx_digest, sha256_file

logger = logging.getLogger(__name__)

#: progress(component, stage, seconds or None when starting)
Progress = Callable[[str, str, "float | None"], None]
#: What `invsr-export --backend` accepts: a backend to build the folder for, or "auto" (TensorRT engines when
#: TensorRT and a GPU are here, else ONNX graphs). Not the runtime's "auto" (run what the folder holds).
EXPORT_TARGETS = ("auto",) + BACKENDS
#: Most calibration / validation photo tiles: all of them (and, for calibration, every UNet input they give,
#: ~1.2 MB per tile at 128 px) are held in memory together; 1024 is ~32x the default.
MAX_PHOTO_TILES = 1024


class ExportOptionError(ValueError):
    """An option value that cannot work (tile size, batch, ...); one line."""


@dataclass(frozen=True)
class ExportOptions:
    """Everything `invsr-export` can be told (see `invsr-export --help`); built by the CLI or by hand."""

    out: Path
    precision: str = "fp16"
    backend: str = "auto"
    base: str = "stabilityai/sd-turbo"
    predictor: str = "hub"
    tile: int | None = None
    batch: int = 1
    calib_images: Path | None = None
    calib_tiles: int = 32
    quantize: tuple[str, ...] = ("unet",)
    smoothquant: float | None = None
    opset: int = DEFAULT_OPSET
    force: bool = False
    validate: bool = True
    gate: bool = True
    gate_db: float | None = None
    validate_tiles: int = 4
    validate_steps: tuple[int, ...] = (1, 2)
    workspace_mib: int = 4096
    optimization_level: int = 3
    version_compatible: bool = False
    timing_cache: Path | None = None
    engine_cache: Path | None = None


@dataclass
class ComponentReport:
    """One row of the summary table."""

    name: str
    file: str = ""
    precision: str = ""
    size_bytes: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)


@dataclass
class ExportReport:
    """What the CLI prints at the end."""

    out: Path
    backend: str
    backend_reason: str
    precision: str
    components: dict[str, ComponentReport]
    validation: dict[str, Any]
    seconds: float = 0.0


def resolve_backend(requested: str) -> tuple[str, "tensorrt_build.TrtEnvironment | None", str]:
    """(backend, TensorRT environment or None, why). `tensorrt` without TensorRT/GPU raises at once."""
    if requested not in EXPORT_TARGETS:
        raise ExportOptionError(f"unknown backend {requested!r}: choose one of {', '.join(EXPORT_TARGETS)}")
    if requested == "onnxruntime":
        return "onnxruntime", None, "requested"
    try:
        env = tensorrt_build.probe()
    except tensorrt_build.TensorRTUnavailable as exc:
        if requested == "tensorrt":
            raise
        return "onnxruntime", None, f"auto: {str(exc).split(';')[0]}"
    return "tensorrt", env, f"auto: TensorRT {env.tensorrt_version} on {env.gpu_name}" if requested == "auto" else "requested"


def check_options(opts: ExportOptions, base_tile: int | None = None) -> int | None:
    """Validate precision / batch / tile before anything heavy; returns the tile (None: not known yet)."""
    if opts.precision not in PRECISIONS:
        raise ExportOptionError(f"unknown precision {opts.precision!r}: choose one of {', '.join(PRECISIONS)}")
    check_batch(opts.batch)
    if not MIN_OPSET <= opts.opset <= max_opset():
        raise ExportOptionError(f"--opset must be {MIN_OPSET}..{max_opset()} (what this PyTorch exporter and onnx "
                                f"package support), got {opts.opset}")
    if opts.gate_db is not None and not (math.isfinite(opts.gate_db) and opts.gate_db >= 0):
        raise ExportOptionError(f"--gate-db must be a finite PSNR in dB (>= 0), got {opts.gate_db}")
    for flag, count in (("--calib-tiles", opts.calib_tiles), ("--validate-tiles", opts.validate_tiles)):
        if not 1 <= count <= MAX_PHOTO_TILES:
            raise ExportOptionError(f"{flag} must be 1..{MAX_PHOTO_TILES}, got {count}: every tile and the model "
                                    "inputs it produces are held in memory at once")
    bad = [c for c in opts.quantize if c not in COMPONENTS]
    if bad or not opts.quantize:
        raise ExportOptionError(f"--quantize takes components from {','.join(COMPONENTS)}, got {','.join(opts.quantize)}")
    if opts.smoothquant is not None and not 0.0 < opts.smoothquant < 1.0:
        raise ExportOptionError(f"--smoothquant takes an alpha between 0 and 1 (e.g. 0.5), got {opts.smoothquant}")
    bad_steps = [s for s in opts.validate_steps if s not in DEFAULT_TIMESTEPS]
    if bad_steps or not opts.validate_steps:
        raise ExportOptionError(f"--validate-steps takes step counts 1..5, got {list(opts.validate_steps)}")
    tile = opts.tile if opts.tile is not None else base_tile
    if tile is not None:
        check_tile(tile)
    return tile


def check_tile(tile: int) -> None:
    """ExportOptionError unless `tile` is a multiple of 16 in 16..MAX_TILE (the message says why)."""
    if tile < TILE_MULTIPLE or tile % TILE_MULTIPLE or tile > MAX_TILE:
        raise ExportOptionError(
            f"--tile must be a multiple of {TILE_MULTIPLE} from {TILE_MULTIPLE} to {MAX_TILE} (e.g. 128), got {tile}: "
            f"the latent (T/2) must split into 8, and export memory grows with the tile's 4th power")


def check_batch(batch: int) -> None:
    """ExportOptionError unless 1 <= batch <= MAX_BATCH (the message says why)."""
    if not 1 <= batch <= MAX_BATCH:
        raise ExportOptionError(
            f"--batch must be 1..{MAX_BATCH}, got {batch}: the graphs are traced with the whole batch, so export "
            f"memory grows with it (more tiles per round at run time: invsr-run --tile-batch)")


def _example_args(io) -> list:
    """Deterministic tracing inputs of the graph's shapes (values only need to be plausible)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    values = {"timestep": 199.0, "sigma": 0.5693, "sigma_next": 0.0}
    args = []
    for t in io.inputs:
        if t.name in values:
            args.append(torch.full(t.shape, values[t.name]))
        else:
            args.append(torch.rand(t.shape, generator=gen))
    return args


def _timed(progress: Progress, report: ComponentReport, stage: str, fn: Callable[[], Any]) -> Any:
    progress(report.name, stage, None)
    t0 = time.perf_counter()
    result = fn()
    report.seconds[stage] = time.perf_counter() - t0
    progress(report.name, stage, report.seconds[stage])
    return result


@dataclass(frozen=True)
class ExportJob:
    """One export run's fixed facts, handed to every step instead of 7-9 positional arguments.

    `stage` is the staging folder that replaces --out at the end; `reports` are filled in by the steps.
    """

    opts: ExportOptions
    backend: str
    env: "tensorrt_build.TrtEnvironment | None"
    base: Any  # invsr_train.models.base.BaseModels
    predictor: Any  # invsr_train NoisePredictor
    wrappers: dict[str, Any]
    specs: dict[str, Any]
    tile: int
    rewrites: tuple[str, ...]
    stage: Path
    reports: dict[str, ComponentReport]
    progress: Progress

    @property
    def work(self) -> Path:
        """Scratch folder inside the staging folder (intermediate graphs), removed at the end."""
        return self.stage / ".work"

    @property
    def final_dir(self) -> Path:
        """Where the final ONNX graphs go: the folder itself (ONNX Runtime) or scratch (TensorRT builds from them)."""
        return self.stage if self.backend == "onnxruntime" else self.work

    def timed(self, component: str, stage: str, fn: Callable[[], Any]) -> Any:
        """Run one step of one component, reporting progress and recording its time."""
        return _timed(self.progress, self.reports[component], stage, fn)


def run_export(opts: ExportOptions, progress: Progress = lambda *a: None) -> ExportReport:
    """The whole job; raises on any failure (nothing is left at --out then)."""
    from invsr_train.models.base import load_base, load_predictor
    from invsr_train.prompts import PROMPT

    from .wrappers import build_wrappers, graph_specs

    t_start = time.perf_counter()
    check_options(opts)  # before anything heavy
    backend, env, reason = resolve_backend(opts.backend)
    engine_folder.check_output(Path(opts.out), opts.force, _inputs(opts))
    base = load_base(opts.base)
    predictor = load_predictor(opts.predictor, base_name=base.name)
    tile = check_options(opts, base.tile)
    embeds = base.prompt_embeds.float().cpu().numpy()
    specs = graph_specs(opts.batch, tile, int(embeds.shape[-1]), int(embeds.shape[-2]))
    reports = {name: ComponentReport(name, precision=_component_precision(name, opts)) for name in COMPONENTS}
    with engine_folder.staging(Path(opts.out), opts.force, _inputs(opts)) as stage:
        job = ExportJob(opts, backend, env, base, predictor, build_wrappers(base, predictor), specs, tile,
                        graph_rewrites.rewrites_for(backend), stage, reports, progress)
        job.work.mkdir()
        predictor_sha = _predictor_sha256(str(opts.predictor), predictor)  # before the models may be released
        fp32_paths = _export_graphs(job)
        paths, notes = _precision_pass(job, fp32_paths)
        validation = _validate(job, paths)
        digests = {name: onnx_digest(p) for name, p in paths.items()}
        files, trt_info = _finish_files(job, paths, digests)
        embeds_file = engine_folder.write_prompt_embeds(stage, embeds)
        provenance = _provenance(job, digests, notes, trt_info, predictor_sha)
        components = {n: engine_folder.component_spec(stage, files[n], specs[n]) for n in COMPONENTS}
        manifest = engine_folder.build_manifest(
            backend=backend, precision=opts.precision, tile=tile, batch=opts.batch, base=base,
            components=components, default_timesteps=DEFAULT_TIMESTEPS, prompt=PROMPT,
            prompt_embeds=embeds_file, provenance=provenance, validation=validation)
        shutil.rmtree(job.work)
        manifest.save(stage)
    return ExportReport(Path(opts.out), backend, reason, opts.precision, reports, validation,
                        time.perf_counter() - t_start)


def _inputs(opts: ExportOptions) -> list[Path]:
    """Files and folders the export reads or updates: --out may not hold (and so replace) any of them."""
    given = [opts.calib_images, opts.timing_cache, opts.engine_cache]
    given += [Path(spec) for spec in (opts.base, opts.predictor) if Path(spec).expanduser().exists()]
    return [Path(p) for p in given if p is not None]


def _component_precision(name: str, opts: ExportOptions) -> str:
    """What each graph becomes: in int8/fp8 folders the --quantize components; the rest is FP16."""
    if opts.precision in ("int8", "fp8") and name not in opts.quantize:
        return "fp16"
    return opts.precision


def _export_graphs(job: ExportJob) -> dict[str, Path]:
    """FP32 ONNX of every component (straight into the final place when the precision is fp32)."""
    opts, paths = job.opts, {}
    for name in COMPONENTS:
        io, wrapper = job.specs[name], job.wrappers[name]
        dst = (job.final_dir / f"{name}.onnx") if opts.precision == "fp32" else (job.work / f"{name}.fp32.onnx")
        with graph_rewrites.applied(wrapper, job.rewrites) as swapped:
            logger.debug("%s: graph rewrites %s", name, swapped)
            job.timed(name, "export", lambda: export_module(
                wrapper, _example_args(io), io.input_names, io.output_names, dst, opts.opset))
        paths[name] = dst
        gc.collect()
    return paths


#: What the FP16 pass records in the provenance.
FP16_NOTES = {"library": "onnxruntime.transformers.float16.convert_float_to_float16",
              "kept_fp32": "normalisation statistics, wrapper arithmetic, timestep sinusoid, predictor softmax"}


def _precision_pass(job: ExportJob, fp32_paths: dict[str, Path]) -> tuple[dict[str, Path], dict[str, Any]]:
    """The graphs at the folder's precision: (final graph paths, notes for the provenance).

    FP32 graphs are final already. Otherwise each graph becomes FP16 (Q/DQ for the --quantize ones in
    int8/fp8 folders), and its FP32 intermediate is deleted at once, so only one extra copy is ever on disk.
    """
    if job.opts.precision == "fp32":
        return dict(fp32_paths), {}
    notes: dict[str, Any] = {"fp16": FP16_NOTES}
    paths: dict[str, Path] = {}
    feeds: dict[str, list] = {}
    for name in COMPONENTS:
        src, dst = fp32_paths[name], job.final_dir / f"{name}.onnx"
        quant_notes = _convert_graph(job, name, src, dst, feeds)
        if quant_notes is not None:
            notes.setdefault("quantization", {})[name] = quant_notes
        for file in graph_files(src):
            file.unlink()
        paths[name] = dst
        gc.collect()
    return paths, notes


def _convert_graph(job: ExportJob, name: str, src: Path, dst: Path, feeds: dict[str, list]) -> dict[str, Any] | None:
    """One FP32 graph -> FP16, or -> Q/DQ (returning the quantization notes) for a --quantize one in int8/fp8.

    `feeds` (component -> calibration inputs) is filled on the first quantized component, for all of them.
    """
    from .precision_fp16 import convert_fp16

    if _component_precision(name, job.opts) in ("int8", "fp8"):
        if not feeds:
            feeds.update(job.timed(name, "calibrate", lambda: _calibration_feeds(job)))
            release_models(job)  # the feeds are recorded: the torch weights are not needed to quantize
        return job.timed(name, "quantize", lambda: _quantize(job, name, feeds.pop(name), src, dst))
    job.timed(name, "fp16", lambda: convert_fp16(src, dst, fp32_softmax=(name == "predictor")))
    return None


def _calibration_feeds(job: ExportJob) -> dict[str, list]:
    from .calibration import calibration_feeds

    opts, base = job.opts, job.base
    return calibration_feeds(job.wrappers, base.prompt_embeds.float().cpu().numpy(), base.alphas_cumprod, job.tile,
                             opts.batch, tiles=opts.calib_tiles, images=opts.calib_images, components=opts.quantize)


def _quantize(job: ExportJob, name: str, feeds: list, src: Path, dst: Path) -> dict:
    """Q/DQ graph of one component, in the form of the folder's backend (see quantize.py)."""
    from .quantize import EXCLUDES, quantize_graph

    opts = job.opts
    notes = quantize_graph(src, dst, opts.precision, feeds, form=job.backend, exclude=EXCLUDES[name],
                           fp32_softmax=(name == "predictor"), smoothquant=opts.smoothquant)
    notes["calibration_images"] = str(opts.calib_images) if opts.calib_images else "scikit-image sample photos"
    notes["calibration_timesteps"] = sorted({t for ts in DEFAULT_TIMESTEPS.values() for t in ts}, reverse=True)
    return notes


def release_models(job: ExportJob) -> None:
    """Free the PyTorch weights (UNet, VAE, predictor: ~5 GB at full size) while big graphs are quantized.

    The modules stay (on the meta device, holding no memory), so nothing else in the job changes;
    validation reloads them (`_reference_models`). Freed memory is handed back to the system at once,
    so the peak of the quantize step does not sit on top of the models (issue 17: 12 GB bound).
    """
    for module in (job.base.unet, job.base.vae, job.predictor):
        module.to("meta")
    _return_free_memory()
    logger.debug("PyTorch models released before quantization")


def _return_free_memory() -> None:
    """Collect garbage and ask glibc (when it is the allocator) to give freed heap pages back to the OS."""
    import ctypes
    import ctypes.util

    gc.collect()
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _reference_models(job: ExportJob) -> tuple[Any, Any, dict[str, Any]]:
    """(base, predictor, graph wrappers) with their weights: the job's, or reloaded if they were released."""
    if job.base.device.type != "meta":
        return job.base, job.predictor, job.wrappers
    from invsr_train.models.base import load_base, load_predictor

    from .wrappers import build_wrappers

    base = load_base(job.opts.base)
    predictor = load_predictor(job.opts.predictor, base_name=base.name)
    return base, predictor, build_wrappers(base, predictor)


def _validate(job: ExportJob, paths: dict[str, Path]) -> dict[str, Any]:
    """ORT vs the PyTorch reference; raises ValidationFailed when the gate is enforced and missed."""
    from invsr_train.pipeline import ReferencePipeline

    from .validate import check_gate, validate

    opts = job.opts
    if not opts.validate:
        return {"skipped": True, "reason": "--no-validate"}
    base, predictor, wrappers = _reference_models(job)
    pipeline = ReferencePipeline(base, predictor)
    result = job.timed("unet", "validate", lambda: validate(
        paths, pipeline, wrappers, opts.precision, job.tile, opts.batch, tiles=opts.validate_tiles,
        steps=opts.validate_steps, images=None, gate_db=opts.gate_db,
        quantized=[n for n in COMPONENTS if _component_precision(n, opts) in ("int8", "fp8")]))
    for name, errors in result.components.items():
        job.reports[name].errors = errors
    check_gate(result, enforce=opts.gate)
    out = result.to_dict()
    out["gate_enforced"] = opts.gate
    return out


def _finish_files(job: ExportJob, paths: dict[str, Path], digests: dict[str, str]):
    """ORT: the graphs already sit in the folder. TensorRT: build (or fetch cached) plans into it."""
    opts, env, reports = job.opts, job.env, job.reports
    files = {name: p.name for name, p in paths.items()}
    if job.backend == "onnxruntime":
        for name, p in paths.items():
            reports[name].file = p.name
            reports[name].size_bytes = sum(f.stat().st_size for f in graph_files(p))
        return files, None
    options = tensorrt_build.BuildOptions(opts.workspace_mib, opts.optimization_level,
                                          str(opts.timing_cache) if opts.timing_cache else None,
                                          opts.version_compatible)
    cache_dir = opts.engine_cache or _default_engine_cache()
    keys = {}
    for name, p in paths.items():
        shapes = {t.name: t.shape for t in job.specs[name].inputs}
        plan, key, hit = job.timed(name, "engine", lambda: tensorrt_build.cached_engine(
            p, digests[name], job.stage / f"{name}.plan", opts.precision, shapes, env, options, cache_dir))
        keys[name] = {"key": key, "cached": hit}
        files[name] = plan.name
        reports[name].file = plan.name
        reports[name].size_bytes = plan.stat().st_size
    built = TensorRTBuild(env.tensorrt_version, env.gpu_name, env.compute_capability)
    info = dict(built.to_dict(), engine_cache=str(cache_dir), engines=keys,
                timing_cache=str(opts.timing_cache) if opts.timing_cache else None)
    return files, info


def _default_engine_cache() -> Path:
    return cache_root() / "engines"


def _predictor_sha256(spec: str, predictor) -> str:
    """sha256 of the predictor checkpoint file (a .pth, a bundle's, the hub cache's); else of its weights."""
    from invsr_train.models.base import ModelLoadError, predictor_file

    path = None
    if not spec.startswith("synthetic"):
        try:
            path = predictor_file(spec)  # already loaded from there, so nothing is fetched
        except ModelLoadError:
            path = None
    if path is not None and path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for key, value in predictor.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return "state_dict:" + digest.hexdigest()


def _build_flags(opts: ExportOptions, tensorrt: bool) -> list[str]:
    """The build settings as flat strings (what the runtime prints and checks)."""
    flags = [f"precision={opts.precision}", f"opset={opts.opset}"]
    if tensorrt:
        flags += ["strongly_typed", f"workspace_mib={opts.workspace_mib}",
                  f"builder_optimization_level={opts.optimization_level}"]
        if opts.version_compatible:
            flags.append("version_compatible")
    return flags


def _provenance(job: ExportJob, digests: dict[str, str], notes: dict[str, Any],
                trt_info: dict[str, Any] | None, predictor_sha256: str) -> dict[str, Any]:
    """Where the folder came from: models, hashes, tools, build flags."""
    opts = job.opts
    info = {k: v for k, v in job.base.info.items() if isinstance(v, (str, int, float, bool, type(None)))}
    return {
        "base": job.base.name,
        "base_info": info,
        "predictor": str(opts.predictor),
        "predictor_sha256": predictor_sha256,
        "onnx_sha256": digests,
        "opset": opts.opset,
        "tile": job.tile,
        "batch": opts.batch,
        "tools": engine_folder.tool_versions(),
        TensorRTBuild.KEY: trt_info,  # the one TensorRT / GPU record (None for ONNX folders)
        "build_flags": _build_flags(opts, trt_info is not None),
        "precision_pass": notes,
        "exporter": "torch.onnx.export(dynamo=False) + onnxscript optimizer",
        "graph_rewrites": list(job.rewrites),
    }
