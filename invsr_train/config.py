"""The training recipe as one nested config: defaults = INVSR.md's "Training" section.

What: dataclasses for every knob of ``invsr-train`` (data, model, losses, discriminator, optimiser,
run), loaded from YAML (``configs/invsr_train.yaml`` is the default recipe written out) and overridden
by command-line flags or ``--set section.key=value``. Why: one place that says what a run did; the
resolved config is saved beside the checkpoints (``OUT/config.yaml``) and inside each checkpoint.

Precedence: dataclass defaults < YAML file < command-line flags. Unknown keys are errors (with their
dotted path), so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from invsr_runtime.schedule import MAX_TIMESTEP

__all__ = [
    "ConfigError",
    "DataConfig",
    "DiscriminatorConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TrainConfig",
    "load_config",
    "parse_assignment",
]

TRAIN_PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PREDICTOR_SIZES = ("auto", "full", "tiny")
HR_LATENT_MODES = ("sample", "mean")


class ConfigError(ValueError):
    """A config file or override is invalid. The message is one line naming the key."""


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Training images and how crops are cut from them."""

    train: list[str] = field(default_factory=list)  # folders of HR images, searched recursively
    val: list[str] = field(default_factory=list)  # held-out folders; empty -> hold out `val_holdout` training files
    val_holdout: int = 8  # images held out of the training set when `val` is empty (0: no validation)
    val_count: int = 8  # at most this many validation images are used
    crop: int = 512  # HR crop (LR = crop / 4); a multiple of 8
    hflip: bool = True
    workers: int = 4  # DataLoader worker processes (0: load in the training process)
    verify: bool = True  # open every file's header at start-up and drop unreadable ones (with a warning)


@dataclass
class ModelConfig:
    """Frozen base (SD-Turbo) and the trained noise predictor."""

    base: str = "stabilityai/sd-turbo"  # hub id, diffusers folder, synthetic:tiny, synthetic:full
    predictor: str = "auto"  # architecture: full (released), tiny, auto (tiny for synthetic:tiny, else full)
    init: str | None = None  # .pth to start from (e.g. the official weights); its architecture wins
    unet_grad_checkpointing: bool = True  # recompute UNet activations in the backward (memory; as the recipe)


@dataclass
class LossConfig:
    """Per-sample timesteps and the latent-space loss terms."""

    timesteps: list[int] = field(default_factory=lambda: [250, 200, 150, 100])  # paper values; nets get t-1
    l2_weight: float = 1.0
    lpips_weight: float = 2.0  # 0 disables the latent LPIPS term
    lpips_path: str | None = None  # latent VGG16-LPIPS weights (vgg16_sdturbo_lpips.pth layout)
    lpips_pools: list[int] = field(default_factory=lambda: [23])  # VGG16 max-pools kept (features indices 4, 9, 16, 23)
    gan_weight: float = 0.1  # 0 disables the discriminator entirely
    gan_start: int = 10000  # generator GAN term from this step on (the discriminator trains from step 0)
    gan_clamp: float = 10.0  # latents are clamped to [-c, c] before the discriminator
    hr_latent: str = "sample"  # target latent: VAE posterior sample (as z_lr) or its mean


@dataclass
class DiscriminatorConfig:
    """UNet-style multi-scale latent discriminator (see :mod:`invsr_train.discriminator`)."""

    channels: list[int] = field(default_factory=lambda: [128, 256, 512])
    norm_groups: int = 32
    time_dim: int = 256
    text_cond: bool = True  # add the (fixed) prompt embedding, pooled, to the time embedding


@dataclass
class OptimConfig:
    """AdamW for the predictor, Adam (L2 weight decay) for the discriminator, EMA."""

    lr: float = 5e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup: int = 2000  # linear warm-up steps of the predictor's learning rate
    grad_clip: float = 0.0  # max global grad norm of the predictor (0: off)
    d_lr: float = 5e-5
    d_weight_decay: float = 1e-3
    d_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    ema_rate: float = 0.999  # with warm-up min(rate, (1 + i) / (10 + i))


@dataclass
class RunConfig:
    """Length, batch, precision, seeds and the logging / checkpoint / validation cadence."""

    max_steps: int = 100000
    batch_size: int = 64  # global batch per optimiser step (all ranks, all micro-batches)
    micro_batch: int = 16  # per-rank forward/backward size; the rest is gradient accumulation
    precision: str = "auto"  # auto: fp16 autocast + grad scaler on CUDA, fp32 on CPU
    seed: int = 0
    log_every: int = 20  # loss figures to TensorBoard + log.jsonl every N steps
    ckpt_every: int = 5000
    keep_checkpoints: int = 3  # full-state checkpoints kept in OUT/checkpoints (the newest)
    val_every: int = 5000  # 0: only at the end
    val_steps: int = 1  # sampling steps used for validation (1..5)
    val_crop: int = 0  # HR centre crop of validation images (0: data.crop)
    sample_count: int = 4  # validation images saved as PNG in OUT/samples


@dataclass
class TrainConfig:
    """Everything ``invsr-train`` needs besides the output folder."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)
    degradation: dict[str, Any] = field(default_factory=dict)  # DegradationConfig.from_dict overrides

    # ------------------------------------------------------------------ conversion
    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        """Build from a nested dict (parsed YAML) over the defaults; unknown keys raise ConfigError."""
        cfg = _build(cls, d, "")
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML / JSON friendly)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The config as YAML text (round-trips through :func:`load_config`)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, assignments: Mapping[str, Any]) -> TrainConfig:
        """A new config with dotted keys (``"loss.gan_start": 500``) replaced; validated."""
        d = self.to_dict()
        for key, value in assignments.items():
            _set_dotted(d, key, value)
        return TrainConfig.from_dict(d)

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Reject values that would make a broken run (raises ConfigError, one line)."""
        _validate_data(self.data)
        _check(self.model.predictor in PREDICTOR_SIZES, "model.predictor", f"must be one of {PREDICTOR_SIZES}")
        _validate_loss(self.loss)
        _validate_discriminator(self.discriminator)
        _validate_optim(self.optim)
        _validate_run(self.train)
        self.degradation_config()  # raises on bad degradation keys

    def degradation_config(self) -> Any:
        """The :class:`invsr_train.degradations.DegradationConfig` this config describes."""
        from invsr_train.degradations import DegradationConfig

        try:
            return DegradationConfig.from_dict(self.degradation)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"degradation: {e}") from e


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------
def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _validate_data(d: DataConfig) -> None:
    _check(d.crop >= 8 and d.crop % 8 == 0, "data.crop", f"must be a positive multiple of 8, got {d.crop}")
    _check(d.workers >= 0, "data.workers", "must be >= 0")
    _check(d.val_holdout >= 0 and d.val_count >= 0, "data.val_holdout", "counts must be >= 0")


def _validate_loss(lc: LossConfig) -> None:
    ts = lc.timesteps
    _check(bool(ts) and all(1 <= t <= MAX_TIMESTEP for t in ts), "loss.timesteps",
           f"each must be in 1..{MAX_TIMESTEP}, got {ts}")
    _check(set(lc.lpips_pools) <= {4, 9, 16, 23}, "loss.lpips_pools",
           "pools are at VGG16 features indices 4, 9, 16, 23")
    for name in ("l2_weight", "lpips_weight", "gan_weight"):
        _check(getattr(lc, name) >= 0, f"loss.{name}", "must be >= 0")
    _check(lc.l2_weight + lc.lpips_weight + lc.gan_weight > 0, "loss", "all loss weights are 0")
    _check(lc.gan_start >= 0 and lc.gan_clamp > 0, "loss.gan_start", "gan_start >= 0 and gan_clamp > 0 required")
    _check(lc.hr_latent in HR_LATENT_MODES, "loss.hr_latent", f"must be one of {HR_LATENT_MODES}")


def _validate_discriminator(dc: DiscriminatorConfig) -> None:
    _check(dc.norm_groups > 0, "discriminator.norm_groups", "must be > 0")
    _check(bool(dc.channels) and all(c > 0 and c % dc.norm_groups == 0 for c in dc.channels),
           "discriminator.channels", f"must be positive multiples of norm_groups={dc.norm_groups}")
    _check(dc.time_dim > 0 and dc.time_dim % 2 == 0, "discriminator.time_dim", "must be a positive even number")


def _validate_optim(o: OptimConfig) -> None:
    _check(o.lr > 0 and o.d_lr > 0, "optim.lr", "learning rates must be > 0")
    _check(o.warmup >= 0 and o.grad_clip >= 0, "optim.warmup", "warmup and grad_clip must be >= 0")
    _check(0.0 <= o.ema_rate < 1.0, "optim.ema_rate", "must be in [0, 1)")
    _check(len(o.betas) == 2 and len(o.d_betas) == 2, "optim.betas", "betas need two values")


def _validate_run(r: RunConfig) -> None:
    _check(r.max_steps >= 0, "train.max_steps", "must be >= 0")
    _check(r.batch_size >= 1 and r.micro_batch >= 1, "train.batch_size", "batch sizes must be >= 1")
    _check(r.precision in TRAIN_PRECISIONS, "train.precision", f"must be one of {TRAIN_PRECISIONS}")
    for name in ("log_every", "ckpt_every", "keep_checkpoints"):
        _check(getattr(r, name) >= 1, f"train.{name}", "must be >= 1")
    _check(r.val_every >= 0 and r.sample_count >= 0, "train.val_every", "val_every and sample_count must be >= 0")
    _check(1 <= r.val_steps <= 5, "train.val_steps", "must be 1..5")
    _check(r.val_crop == 0 or r.val_crop % 8 == 0, "train.val_crop", "must be 0 or a multiple of 8")


# --------------------------------------------------------------------------------------------------
# Loading and overrides
# --------------------------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, then the YAML file (if any), then dotted overrides: the resolved, validated config."""
    d: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from e
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {p} must hold a mapping of sections, got {type(loaded).__name__}")
        d = dict(loaded or {})
    cfg = TrainConfig.from_dict(d)
    return cfg.override(overrides) if overrides else cfg


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"loss.gan_start=500"`` -> ``("loss.gan_start", 500)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid YAML") from e
    return key.strip(), value


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    """Assign ``d[a][b] = value`` for ``key = "a.b"``; sections must exist except under ``degradation``."""
    parts = key.split(".")
    node = d
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            if parts[0] != "degradation":
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"config key {'.'.join(parts[: i + 1])!r} is not a section")
    if parts[0] != "degradation" and parts[-1] not in node:
        raise ConfigError(f"unknown config key {key!r}")
    node[parts[-1]] = value


def _build(cls: type, d: Any, path: str) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``d`` (missing keys keep their defaults)."""
    where = path.rstrip(".") or "<root>"
    if d is None:
        d = {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"config section {where!r} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        known = ", ".join(names)
        raise ConfigError(f"unknown config key {path + str(unknown[0])!r} (known in {where}: {known})")
    kwargs = {k: _coerce(hints[k], v, f"{path}{k}") for k, v in d.items()}
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """Check/convert one value against its type hint (dataclass, list, dict, scalar, optional)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single folder / value for a list key
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        return [_coerce(args[0], v, key) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return dict(value)
    return _scalar(hint, value, key)


def _scalar(hint: Any, value: Any, key: str) -> Any:
    """bool / int / float / str values (ints accepted for floats, never bools for numbers)."""
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:  # YAML 1.1 reads "5e-5" as a string
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return str(value)
    return value
