"""SD-Turbo (InvSR's frozen base: UNet, VAE, fixed prompt embedding, schedule) loaded in one place.

Base specs, so the whole toolkit works on machines that reach no model hub:

* a hub id (``stabilityai/sd-turbo``, optionally ``@revision``): a snapshot of the needed subfolders via
  ``huggingface_hub``; offline (``HF_HUB_OFFLINE=1``) straight from the hub cache, which may be a copy
  from another machine (:mod:`invsr_train.models.hub_cache`). Unreachable -> :class:`ModelLoadError`.
* a local diffusers folder (``model_index.json`` or ``unet/`` + ``vae/``), a bundle written by
  ``invsr-models download`` (same layout + a lock file, :mod:`invsr_train.models.bundle`) or a copied
  ``models--org--name`` cache folder: checked first (:mod:`invsr_train.models.checks`: missing files,
  wrong model family, weights that do not fit their config, truncated files), then ``from_pretrained``
  of the UNet and VAE, alphas_cumprod from ``scheduler/scheduler_config.json``, the prompt embedding
  from ``prompt_embeds.npy`` or ``tokenizer/`` + ``text_encoder/`` (cached, see :mod:`invsr_train.prompts`).
* a single-file ``.safetensors`` checkpoint with the original key names (:mod:`invsr_train.models.single_file`).
* ``synthetic:full``: the exact SD-Turbo architecture with seeded random weights (latency does not
  depend on weight values).
* ``synthetic:tiny``: the same classes and block structure at tiny widths, for tests (LR tile 32).

Synthetic weights are PyTorch's default initialisation under a fixed seed per component (the global
RNG is left untouched), so a name means the same weights on every machine. No rescaling is applied:
a random-init pipeline (VAE encode -> UNet -> VAE decode) stays finite with activations below ~15 at
full size and ~5 at tiny size (checked in fp32), far inside fp16 range.

:func:`load_predictor` does the same for InvSR's noise predictor (hub / .pth path / bundle / synthetic).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from invsr_runtime.schedule import SD_TURBO_SCHEDULER, alphas_cumprod
from invsr_train import prompts
from invsr_train.models import bundle, checks, hub_cache
from invsr_train.models.download import BASE_ALLOW, DEFAULT_BASE, PREDICTOR_FILE, PREDICTOR_REPO
from invsr_train.models.errors import ModelLoadError

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from invsr_train.models.noise_predictor import NoisePredictor

logger = logging.getLogger(__name__)

SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_SIZES = ("tiny", "full")
#: Default LR tile per synthetic size (real bases use the full-size tile).
SYNTHETIC_TILES = {"tiny": 32, "full": 128}
FULL_TILE = 128
#: SD 1.x/2.x VAE latent scaling (used only when a VAE config lacks the field).
SD_SCALING_FACTOR = 0.18215

PREDICTOR_SPECS = ("hub", "synthetic", "synthetic:tiny", "synthetic:full")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")

_BASE_FORMS = (
    "a hub id (e.g. stabilityai/sd-turbo[@revision]), a local diffusers folder (with model_index.json or unet/ and vae/), "
    "a bundle from invsr-models download, a copied hub-cache models--org--name folder, a single-file .safetensors, "
    "synthetic:tiny or synthetic:full"
)


@dataclass
class BaseModels:
    """The frozen half of InvSR: everything the sampler needs besides the noise predictor.

    ``prompt_embeds`` is the fixed prompt's embedding [1, 77, D] on the models' device/dtype;
    ``alphas_cumprod`` the scheduler's float64 table; ``tile`` the default LR tile size;
    ``name`` the spec that was loaded; ``info`` where things came from (source, path, revision, ...).
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    prompt_embeds: torch.Tensor
    alphas_cumprod: np.ndarray
    scaling_factor: float
    tile: int
    name: str
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """Device of the UNet (all parts live on the same one)."""
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the UNet (all parts share it)."""
        return next(self.unet.parameters()).dtype


# ----------------------------------------------------------------------------------------------------
# Architectures
# ----------------------------------------------------------------------------------------------------


def unet_config(size: str = "full") -> dict[str, Any]:
    """UNet2DConditionModel kwargs: SD-Turbo's (SD 2.1 design) for ``full``, tiny widths for ``tiny``.

    Both keep SD's block layout (3 cross-attention down blocks + a plain one, mirrored on the way up,
    2 resnets per level, linear projections), so latents relate to images exactly as in the real model.
    Note diffusers' ``attention_head_dim`` here is really the *number* of heads (SD 2.x naming).
    """
    _check_size(size)
    common: dict[str, Any] = {
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "layers_per_block": 2,
        "use_linear_projection": True,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "act_fn": "silu",
        "norm_eps": 1e-5,
    }
    if size == "full":
        return {
            **common,
            "sample_size": 64,
            "block_out_channels": (320, 640, 1280, 1280),
            "attention_head_dim": (5, 10, 20, 20),
            "cross_attention_dim": 1024,
            "norm_num_groups": 32,
        }
    return {
        **common,
        "sample_size": SYNTHETIC_TILES["tiny"] * 4 // 8,
        "block_out_channels": (32, 32, 64, 64),
        "attention_head_dim": (2, 2, 4, 4),
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
    }


def vae_config(size: str = "full") -> dict[str, Any]:
    """AutoencoderKL kwargs: the SD VAE for ``full``; tiny widths with the same 8x down/up for ``tiny``."""
    _check_size(size)
    common: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "latent_channels": 4,
        "act_fn": "silu",
        "scaling_factor": SD_SCALING_FACTOR,
    }
    if size == "full":
        return {**common, "block_out_channels": (128, 256, 512, 512), "norm_num_groups": 32, "sample_size": 512}
    return {**common, "block_out_channels": (16, 32, 32, 32), "norm_num_groups": 8, "sample_size": 128}


def build_unet(size: str = "full", device: str | torch.device = "cpu") -> UNet2DConditionModel:
    """Construct the UNet of a synthetic size with PyTorch's default init on ``device``; ``"meta"`` allocates nothing."""
    from diffusers import UNet2DConditionModel

    with torch.device(device):
        return UNet2DConditionModel(**unet_config(size))


def build_vae(size: str = "full", device: str | torch.device = "cpu") -> AutoencoderKL:
    """Construct a VAE (PyTorch default init) on ``device``; ``"meta"`` allocates nothing."""
    from diffusers import AutoencoderKL

    with torch.device(device):
        return AutoencoderKL(**vae_config(size))


def synthetic_seed(name: str, component: str) -> int:
    """Stable per-component seed (CRC-32 of ``name/component``): same name -> same weights everywhere."""
    return zlib.crc32(f"{name}/{component}".encode("utf-8"))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# ----------------------------------------------------------------------------------------------------
# load_base
# ----------------------------------------------------------------------------------------------------


def load_base(
    spec: str | os.PathLike[str] = DEFAULT_BASE,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BaseModels:
    """Load SD-Turbo's UNet, VAE, prompt embedding and schedule from any base spec (see the module doc).

    Specs: a hub id (``org/name`` or ``org/name@revision``; offline: from the hub cache), a diffusers
    folder, a bundle (``invsr-models download``), a ``models--org--name`` folder of a copied hub cache,
    a single-file ``.safetensors`` checkpoint, ``synthetic:tiny`` / ``synthetic:full``.
    Models come back in eval mode with ``requires_grad`` off, on ``device`` in ``dtype``.
    Raises :class:`ModelLoadError` (one line, naming what to pass instead) for anything unloadable.
    """
    text = os.fspath(spec).strip()
    if not text:
        raise ModelLoadError(f"empty base model spec: pass {_BASE_FORMS}")
    if text.startswith(SYNTHETIC_PREFIX):
        return _load_synthetic(text, device, dtype)
    path = Path(text).expanduser()
    if path.exists():
        return _load_path(path, text, device, dtype)
    repo_id, revision = hub_cache.split_revision(text)
    if _HUB_ID.match(repo_id):
        snap = _fetch_hub_snapshot(repo_id, revision)
        info = {"source": "hub", "repo_id": repo_id, "revision": snap.commit, "path": str(snap.folder)}
        return _load_folder(snap.folder, text, device, dtype, info)
    if _looks_like_path(text):
        raise ModelLoadError(f"base model folder {text!r} does not exist: pass {_BASE_FORMS}")
    raise ModelLoadError(f"unknown base model {text!r}: pass {_BASE_FORMS}")


def _load_path(path: Path, name: str, device: str | torch.device, dtype: torch.dtype) -> BaseModels:
    """An existing path: single-file checkpoint, copied hub-cache repo folder, bundle or diffusers folder."""
    if path.is_file():
        from invsr_train.models import single_file

        return single_file.load(path, name, device, dtype)
    if hub_cache.REPO_FOLDER.match(path.name) and (path / "snapshots").is_dir():
        snap = hub_cache.resolve_repo_folder(path, None)
        info = {"source": "hub-cache", "repo_id": snap.repo_id, "revision": snap.commit, "path": str(snap.folder)}
        return _load_folder(snap.folder, name, device, dtype, info)
    info: dict[str, Any] = {"source": "folder", "path": str(path.resolve())}
    if bundle.is_bundle(path):
        lock = bundle.check_sizes(path)
        src = lock.sources.get("base", {})
        info = {**info, "source": "bundle", "repo_id": src.get("repo"), "revision": src.get("commit")}
    if not (is_diffusers_folder(path) or (path / "transformer").is_dir()):
        raise ModelLoadError(f"base model {name!r} is not a diffusers folder: pass {_BASE_FORMS}")
    return _load_folder(path, name, device, dtype, info)


def _looks_like_path(text: str) -> bool:
    """True for specs that can only be meant as a file system path (absolute, ./, ~, several parts)."""
    return text.startswith((".", "~", os.sep)) or text.count("/") > 1 or "\\" in text


def is_diffusers_folder(path: str | os.PathLike[str]) -> bool:
    """True for a folder with ``model_index.json`` or with both ``unet/`` and ``vae/`` subfolders."""
    path = Path(path)
    return path.is_dir() and (
        (path / "model_index.json").is_file() or ((path / "unet").is_dir() and (path / "vae").is_dir())
    )


def _load_synthetic(name: str, device: str | torch.device, dtype: torch.dtype) -> BaseModels:
    """Seeded random-weight base of the given synthetic size (``synthetic:tiny`` / ``synthetic:full``)."""
    size = name[len(SYNTHETIC_PREFIX):]
    if size not in SYNTHETIC_SIZES:
        raise ModelLoadError(f"unknown base model {name!r}: pass {_BASE_FORMS}")
    with seeded(synthetic_seed(name, "unet")):
        unet = build_unet(size)
    with seeded(synthetic_seed(name, "vae")):
        vae = build_vae(size)
    dim = unet.config.cross_attention_dim
    embeds = prompts.synthetic_prompt_embeds(dim, synthetic_seed(name, "prompt"))
    logger.info("loaded %s: random weights (fixed seeds), %s, tile %d", name, _sizes(unet, vae), SYNTHETIC_TILES[size])
    return _assemble(
        unet, vae, embeds, alphas_cumprod(**SD_TURBO_SCHEDULER), SYNTHETIC_TILES[size], name,
        {"source": "synthetic", "size": size, "prompt_embeds": "synthetic"}, device, dtype,
    )


def _load_folder(
    folder: Path, name: str, device: str | torch.device, dtype: torch.dtype, info: dict[str, Any]
) -> BaseModels:
    """Load UNet, VAE, schedule and prompt embedding from a diffusers folder (local or hub snapshot)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    check_folder(folder, name)
    unet = _from_pretrained(UNet2DConditionModel, folder, "unet", name)
    vae = _from_pretrained(AutoencoderKL, folder, "vae", name)
    acp = _folder_alphas_cumprod(folder, name)
    embeds, origin = _folder_embeds(folder, info)
    dim = unet.config.cross_attention_dim
    if embeds.shape[-1] != dim:
        raise ModelLoadError(
            f"base model {name!r}: prompt embedding width {embeds.shape[-1]} != UNet cross_attention_dim {dim}; "
            f"delete the stale {prompts.FOLDER_EMBEDS_FILE} or cache entry"
        )
    info = {**info, "prompt_embeds": origin}
    logger.info("loaded base %s from %s (%s, prompt embedding: %s)", name, folder, _sizes(unet, vae), origin)
    return _assemble(unet, vae, embeds, acp, FULL_TILE, name, info, device, dtype)


def check_folder(folder: Path, name: str) -> None:
    """Everything :mod:`invsr_train.models.checks` can say about a folder before diffusers reads it."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    checks.check_not_transformer_model(folder, name)
    configs = {sub: checks.read_json(folder, f"{sub}/config.json", name) for sub in ("unet", "vae")}
    checks.check_family(configs["unet"], configs["vae"], name)
    for cls, sub in ((UNet2DConditionModel, "unet"), (AutoencoderKL, "vae")):
        files = checks.weight_files(folder, sub, name)
        checks.check_weights_fit_config(cls, configs[sub], files, folder, sub, name)


def _from_pretrained(cls: Any, folder: Path, subfolder: str, name: str) -> Any:
    """``cls.from_pretrained(folder, subfolder=...)`` with failures turned into a one-line ModelLoadError."""
    try:
        return cls.from_pretrained(str(folder), subfolder=subfolder)
    except Exception as e:  # missing files, bad config, truncated weights...
        raise ModelLoadError(
            f"could not load the {subfolder} of base model {name!r} from {folder} "
            f"({type(e).__name__}: {prompts.first_line(e)}): pass {_BASE_FORMS}"
        ) from e


def _folder_alphas_cumprod(folder: Path, name: str) -> np.ndarray:
    """alphas_cumprod from ``scheduler/scheduler_config.json`` (SD-Turbo's values for missing fields)."""
    cfg_file = folder / "scheduler" / "scheduler_config.json"
    cfg: dict[str, Any] = {}
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"base model {name!r}: unreadable {cfg_file} ({e})") from e
    else:
        logger.info("no scheduler config in %s: using SD-Turbo's schedule", folder)
    checks.check_prediction_type(cfg, name)
    if cfg.get("trained_betas") is not None:
        raise ModelLoadError(f"base model {name!r}: trained_betas in {cfg_file} are not supported")
    kwargs = {key: cfg.get(key, default) for key, default in SD_TURBO_SCHEDULER.items()}
    try:
        return alphas_cumprod(**kwargs)
    except ValueError as e:
        raise ModelLoadError(f"base model {name!r}: {e}") from e


def _folder_embeds(folder: Path, info: dict[str, Any]) -> tuple[np.ndarray, str]:
    """Prompt embedding of a folder; hub snapshots are keyed by (repo id, revision), folders by content."""
    source = (info.get("repo_id") if info.get("revision") else None) or str(folder.resolve())
    revision = info.get("revision")
    fingerprint = f"revision:{revision}" if revision else None
    try:
        return prompts.folder_prompt_embeds(folder, prompts.PROMPT, source=source, fingerprint=fingerprint)
    except prompts.PromptEmbedError as e:
        raise ModelLoadError(str(e)) from e


def _assemble(
    unet: Any,
    vae: Any,
    embeds: np.ndarray,
    acp: np.ndarray,
    tile: int,
    name: str,
    info: dict[str, Any],
    device: str | torch.device,
    dtype: torch.dtype,
) -> BaseModels:
    """Freeze, move and package the parts."""
    for model in (unet, vae):
        model.requires_grad_(False)
        model.eval()
        # nn.Module.to, not ModelMixin.to: the latter warns about fp32-only modules on every dtype cast,
        # even though UNet2DConditionModel and AutoencoderKL have none.
        torch.nn.Module.to(model, device=device, dtype=dtype)
    scaling = float(getattr(vae.config, "scaling_factor", None) or SD_SCALING_FACTOR)
    return BaseModels(
        unet=unet,
        vae=vae,
        prompt_embeds=prompts.to_tensor(embeds, device, dtype),
        alphas_cumprod=np.asarray(acp, dtype=np.float64),
        scaling_factor=scaling,
        tile=tile,
        name=name,
        info=info,
    )


def _sizes(unet: Any, vae: Any) -> str:
    """Human-readable parameter counts, for the log."""
    count = lambda m: sum(p.numel() for p in m.parameters()) / 1e6  # noqa: E731
    return f"UNet {count(unet):.1f} M, VAE encoder {count(vae.encoder):.2f} M, decoder {count(vae.decoder):.2f} M params"


# ----------------------------------------------------------------------------------------------------
# Hub access
# ----------------------------------------------------------------------------------------------------


def _fetch_hub_snapshot(repo_id: str, revision: str | None) -> hub_cache.CachedSnapshot:
    """Snapshot of a hub repo: the cache alone when offline, else a download (cache as the fallback)."""
    remedy = "pass a bundle or local diffusers folder (--base /path/to/sd-turbo) or --base synthetic:tiny / synthetic:full"
    if hub_cache.hub_offline():
        try:
            snap = hub_cache.cached_snapshot(repo_id, revision)
        except ModelLoadError as e:
            raise ModelLoadError(f"offline mode (HF_HUB_OFFLINE): {e}; or {remedy}") from e
        logger.info("hub cache snapshot of %s at %s (commit %s)", repo_id, snap.folder, snap.commit)
        return snap
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                repo_id, revision=revision, cache_dir=str(hub_cache.hub_cache_dir()),
                allow_patterns=BASE_ALLOW,
            )
        )
    except Exception as e:  # offline, DNS failure, 404, gated repo, missing huggingface_hub...
        with contextlib.suppress(ModelLoadError):
            return hub_cache.cached_snapshot(repo_id, revision)
        raise ModelLoadError(
            f"could not fetch base model {repo_id!r} from the Hugging Face hub ({_hub_reason(e, False)}): {remedy}"
        ) from e
    logger.info("hub snapshot of %s at %s", repo_id, folder)
    return hub_cache.CachedSnapshot(folder, repo_id, folder.name)


def _hub_reason(e: BaseException, offline: bool) -> str:
    """Short reason for a failed hub fetch (hub messages are multi-line, so only the class name)."""
    if offline:
        return f"offline mode (HF_HUB_OFFLINE) and not in the local cache: {type(e).__name__}"
    return type(e).__name__


# ----------------------------------------------------------------------------------------------------
# load_predictor
# ----------------------------------------------------------------------------------------------------


def load_predictor(
    spec: str | os.PathLike[str] = "hub",
    base_name: str | None = None,
    device: str | torch.device = "cpu",
) -> NoisePredictor:
    """Load InvSR's noise predictor: ``hub`` (the released v5 weights), a .pth path, or synthetic weights.

    ``synthetic`` picks the size that matches ``base_name`` (tiny for ``synthetic:tiny``, the released
    architecture otherwise); ``synthetic:tiny`` / ``synthetic:full`` choose it explicitly. Returned in
    eval mode and fp32 (it runs under autocast on GPU); gradients stay enabled since it is the trained part.
    Raises :class:`ModelLoadError` (one line) when it cannot be loaded.
    """
    text = os.fspath(spec).strip()
    if text == "synthetic" or text in ("synthetic:tiny", "synthetic:full"):
        model = _synthetic_predictor(_predictor_size(text, base_name))
    else:
        model = _predictor_from_file(predictor_file(text))
    return model.to(device=device, dtype=torch.float32).eval()


def predictor_file(spec: str | os.PathLike[str]) -> Path:
    """The checkpoint file a non-synthetic predictor spec names: ``hub`` (cache or download), a .pth, a bundle.

    A bundle folder (or any folder holding ``noise_predictor_sd_turbo_v5.pth``) stands for that file; a
    bundle's lock file is checked for the file's size first. One-line ModelLoadError otherwise.
    """
    text = os.fspath(spec).strip()
    if text == "hub":
        return _fetch_predictor_file()
    path = Path(text).expanduser()
    if path.is_dir() and (path / PREDICTOR_FILE).is_file():
        if bundle.is_bundle(path):
            bundle.check_sizes(path)
        return path / PREDICTOR_FILE
    if path.is_file():
        if bundle.is_bundle(path.parent):
            bundle.check_sizes(path.parent)
        return path
    what = "checkpoint file does not exist" if _looks_like_path(text) or text.endswith(".pth") or path.is_dir() else "unknown"
    raise ModelLoadError(
        f"noise predictor {text!r}: {what}: pass hub, a .pth checkpoint path, a bundle folder (invsr-models download), "
        "synthetic, synthetic:tiny or synthetic:full"
    )


def _predictor_size(spec: str, base_name: str | None) -> str:
    """``tiny`` or ``full`` for a synthetic predictor spec (plain ``synthetic`` follows the base)."""
    if spec != "synthetic":
        return spec[len(SYNTHETIC_PREFIX):]
    return "tiny" if base_name == f"{SYNTHETIC_PREFIX}tiny" else "full"


def _synthetic_predictor(size: str) -> NoisePredictor:
    """Seeded random-weight noise predictor (tiny config or the released one)."""
    from invsr_train.models.noise_predictor import NoisePredictor, NoisePredictorConfig

    config = NoisePredictorConfig.tiny() if size == "tiny" else NoisePredictorConfig()
    name = f"{SYNTHETIC_PREFIX}{size}"
    with seeded(synthetic_seed(name, "predictor")):
        model = NoisePredictor(config)
    count = sum(p.numel() for p in model.parameters())
    logger.info("loaded noise predictor %s: random weights (fixed seed), %d params", name, count)
    return model


def _predictor_from_file(path: Path) -> NoisePredictor:
    """NoisePredictor.from_checkpoint with its CheckpointError turned into a ModelLoadError."""
    from invsr_train.models.noise_predictor import CheckpointError, NoisePredictor

    try:
        model = NoisePredictor.from_checkpoint(path)
    except CheckpointError as e:
        raise ModelLoadError(f"could not load noise predictor: {prompts.first_line(e)}") from e
    return model  # from_checkpoint logs what it loaded


def _fetch_predictor_file() -> Path:
    """Path of the released checkpoint (download or cache), or a one-line ModelLoadError."""
    offline = hub_cache.hub_offline()
    try:
        from huggingface_hub import hf_hub_download

        # Cache first: the released file never changes, and an unreachable hub costs ~20 s of retries.
        cache = str(hub_cache.hub_cache_dir())
        with contextlib.suppress(Exception):
            return Path(hf_hub_download(PREDICTOR_REPO, PREDICTOR_FILE, cache_dir=cache, local_files_only=True))
        return Path(hf_hub_download(PREDICTOR_REPO, PREDICTOR_FILE, cache_dir=cache, local_files_only=offline))
    except Exception as e:  # offline, DNS failure, 404, missing huggingface_hub...
        raise ModelLoadError(
            f"could not fetch the noise predictor {PREDICTOR_REPO}/{PREDICTOR_FILE} from the Hugging Face hub "
            f"({_hub_reason(e, offline)}): pass a local .pth (--predictor /path/to/{PREDICTOR_FILE}), "
            "a bundle folder (invsr-models download) or --predictor synthetic"
        ) from e


def _check_size(size: str) -> None:
    """Reject unknown synthetic sizes with the valid forms."""
    if size not in SYNTHETIC_SIZES:
        raise ModelLoadError(f"unknown synthetic size {size!r}: pass {_BASE_FORMS}")
