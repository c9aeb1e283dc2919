"""InvSR's noise predictor: a time-conditioned, VAE-encoder-shaped network.

The predictor is the only trained part of InvSR. It looks at the low-resolution (LR) image at its own
size and a timestep, and returns the moments (mean, log-variance) of a Gaussian over the noise map that,
added to the LR image's SD latent, lets SD-Turbo's few-step sampler land on the high-resolution image.

Architecture (see ``shared/INVSR.md``, "Noise predictor (released config)"): sinusoidal timestep
embedding -> MLP; conv_in; down block 0 at LR size (resnet + self-attention pairs, then an
*asymmetrically padded* stride-2 conv); down block 1 at half size (resnet + attention pairs, first resnet
widens with a 1x1 shortcut); mid block (resnet, attention, resnet); GroupNorm + SiLU + conv head giving
8 channels. Every weight lives under a submodule called ``encoder`` and uses diffusers' naming, so the
``state_dict`` keys, their order and shapes equal the official ``noise_predictor_sd_turbo_v5.pth``.

The building blocks are diffusers' own (``ResnetBlock2D``, ``Attention``, ``Downsample2D``,
``Timesteps``, ``TimestepEmbedding``); the tests check their numerics against hand-written references
so a change in the library cannot silently change the network.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffusers.models.attention_processor import Attention
from diffusers.models.downsampling import Downsample2D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.resnet import ResnetBlock2D

from invsr_train.models.files import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "NoisePredictor",
    "NoisePredictorConfig",
    "sample_from_moments",
    "CONFIG_JSON_KEY",
]

#: Key under which the config is stored in the JSON file saved beside a checkpoint.
CONFIG_JSON_KEY = "noise_predictor_config"
#: Prefixes that wrappers (DataParallel / DDP, torch.compile) add to state_dict keys.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
#: Name of the submodule that owns every weight (the official checkpoint's top-level prefix).
_ROOT = "encoder"


class CheckpointError(ValueError):
    """A file is not a usable noise-predictor checkpoint. The message is one line naming the file."""


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------
@dataclass
class NoisePredictorConfig:
    """Hyper-parameters of the noise predictor. The defaults are the released InvSR configuration.

    ``block_channels`` lists the width of each down block; every block but the last ends with a stride-2
    downsample, so the output is ``2 ** (len(block_channels) - 1)`` times smaller than the input (2x for
    the released model: the SD latent size of a x4 output). Attention uses ``max(1, C // head_dim)``
    heads. The log-variance half of the output is clamped to ``logvar_clamp``.
    """

    in_channels: int = 3
    out_channels: int = 8
    block_channels: tuple[int, ...] = (256, 512)
    layers_per_block: int = 3
    head_dim: int = 64
    norm_groups: int = 32
    norm_eps: float = 1e-6
    time_proj_dim: int = 256
    time_embed_dim: int = 512
    logvar_clamp: tuple[float, float] = field(default=(-30.0, 20.0))

    def __post_init__(self) -> None:
        # Normalise JSON lists to tuples and reject configs that would build a broken network.
        self.block_channels = tuple(int(c) for c in self.block_channels)
        self.logvar_clamp = (float(self.logvar_clamp[0]), float(self.logvar_clamp[1]))
        positive = {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "layers_per_block": self.layers_per_block,
            "head_dim": self.head_dim,
            "norm_groups": self.norm_groups,
            "time_proj_dim": self.time_proj_dim,
            "time_embed_dim": self.time_embed_dim,
        }
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(f"NoisePredictorConfig.{name} must be a positive integer, got {value!r}")
        if not self.block_channels or min(self.block_channels) < 1:
            raise ValueError(f"NoisePredictorConfig.block_channels must be non-empty and positive, got {self.block_channels}")
        for c in self.block_channels:
            if c % self.norm_groups:
                raise ValueError(f"block width {c} is not divisible by norm_groups={self.norm_groups}")
        if self.out_channels % 2:
            raise ValueError(f"out_channels must be even (mean + log-variance), got {self.out_channels}")
        if self.time_proj_dim % 2:
            raise ValueError(f"time_proj_dim must be even (cos + sin halves), got {self.time_proj_dim}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if not self.logvar_clamp[0] < self.logvar_clamp[1]:
            raise ValueError(f"logvar_clamp must be (low, high) with low < high, got {self.logvar_clamp}")

    @classmethod
    def tiny(cls) -> NoisePredictorConfig:
        """A few-thousand-parameter config with the same structure, for tests and synthetic pipelines.

        Only widths and depth shrink; groups, eps and head size keep the defaults so that a tiny
        checkpoint saved without its JSON is rebuilt exactly by :meth:`from_state_dict_shapes`.
        """
        return cls(block_channels=(32, 64), layers_per_block=1, time_proj_dim=32, time_embed_dim=64)

    @property
    def downscale(self) -> int:
        """How many times smaller the output is than the input (2 for the released config)."""
        return 2 ** (len(self.block_channels) - 1)

    @property
    def latent_channels(self) -> int:
        """Channels of the mean (and of the noise sample): half of ``out_channels``."""
        return self.out_channels // 2

    def heads(self, channels: int) -> int:
        """Number of attention heads at a given width."""
        return max(1, channels // self.head_dim)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["block_channels"] = list(self.block_channels)
        d["logvar_clamp"] = list(self.logvar_clamp)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NoisePredictorConfig:
        """Inverse of :meth:`to_dict`. Unknown keys are ignored with a warning (newer files stay loadable)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            logger.warning("ignoring unknown noise predictor config keys: %s", ", ".join(unknown))
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_state_dict_shapes(cls, state_dict: Mapping[str, Any]) -> NoisePredictorConfig:
        """Infer the config from the weights' shapes.

        Widths, depth, channel counts and time-embedding sizes come from the shapes; what shapes cannot
        tell (eps, head_dim, norm groups, clamp range) takes the defaults. Keys may carry wrapper prefixes
        or lack the ``encoder.`` prefix. Entries that are missing fall back to the defaults too; the
        mismatch then surfaces when the weights are checked against the built model.
        """
        sd = _strip_prefixes(state_dict)
        sd = {k[len(_ROOT) + 1 :] if k.startswith(_ROOT + ".") else k: v for k, v in sd.items()}
        default = cls()

        def shape(key: str) -> tuple[int, ...] | None:
            v = sd.get(key)
            return tuple(v.shape) if hasattr(v, "shape") else None

        kwargs: dict[str, Any] = {}
        if (s := shape("conv_in.weight")) is not None and len(s) == 4:
            kwargs["in_channels"] = s[1]
        if (s := shape("conv_out.weight")) is not None and len(s) == 4:
            kwargs["out_channels"] = s[0]
        if (s := shape("time_embedding.linear_1.weight")) is not None and len(s) == 2:
            kwargs["time_embed_dim"], kwargs["time_proj_dim"] = s

        block_ids = sorted({int(m.group(1)) for k in sd if (m := re.match(r"down_blocks\.(\d+)\.", k))})
        if block_ids and block_ids == list(range(len(block_ids))):
            widths = []
            for i in block_ids:
                s = shape(f"down_blocks.{i}.resnets.0.conv1.weight")
                if s is None or len(s) != 4:
                    widths = []
                    break
                widths.append(s[0])
            if widths:
                kwargs["block_channels"] = tuple(widths)
            layers = {int(m.group(1)) for k in sd if (m := re.match(r"down_blocks\.0\.resnets\.(\d+)\.", k))}
            if layers:
                kwargs["layers_per_block"] = max(layers) + 1
        try:
            return dataclasses.replace(default, **kwargs)
        except ValueError as e:  # shapes that make no valid config (e.g. width not divisible by groups)
            raise ValueError(f"cannot infer a noise predictor config from these weights: {e}") from e


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------
class _DownBlock(nn.Module):
    """``layers`` x (resnet -> self-attention), then an optional stride-2 downsample.

    Submodules are registered attentions -> resnets -> downsamplers, the order of the official keys.
    """

    def __init__(self, cfg: NoisePredictorConfig, in_ch: int, out_ch: int, downsample: bool) -> None:
        super().__init__()
        self.attentions = nn.ModuleList(_attention(cfg, out_ch) for _ in range(cfg.layers_per_block))
        self.resnets = nn.ModuleList(
            _resnet(cfg, in_ch if i == 0 else out_ch, out_ch) for i in range(cfg.layers_per_block)
        )
        if downsample:
            # padding=0 makes Downsample2D zero-pad one column right and one row bottom before a
            # stride-2, padding-0 conv (asymmetric, as the released weights were trained with).
            self.downsamplers = nn.ModuleList([Downsample2D(out_ch, use_conv=True, out_channels=out_ch, padding=0, name="op")])
        else:
            self.downsamplers = None

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        for resnet, attn in zip(self.resnets, self.attentions):
            x = resnet(x, temb)
            x = attn(x)
        if self.downsamplers is not None:
            for down in self.downsamplers:
                x = down(x)
        return x


class _MidBlock(nn.Module):
    """resnet -> self-attention -> resnet, registered attentions before resnets (official key order)."""

    def __init__(self, cfg: NoisePredictorConfig, ch: int) -> None:
        super().__init__()
        self.attentions = nn.ModuleList([_attention(cfg, ch)])
        self.resnets = nn.ModuleList([_resnet(cfg, ch, ch), _resnet(cfg, ch, ch)])

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x)
        return self.resnets[1](x, temb)


def _resnet(cfg: NoisePredictorConfig, in_ch: int, out_ch: int) -> ResnetBlock2D:
    """GroupNorm-SiLU-conv3x3 (+ Linear(SiLU(temb))) - GroupNorm-SiLU-conv3x3, 1x1 shortcut when widening."""
    return ResnetBlock2D(
        in_channels=in_ch,
        out_channels=out_ch,
        temb_channels=cfg.time_embed_dim,
        groups=cfg.norm_groups,
        eps=cfg.norm_eps,
        dropout=0.0,
        non_linearity="silu",
        time_embedding_norm="default",
        output_scale_factor=1.0,
    )


def _attention(cfg: NoisePredictorConfig, ch: int) -> Attention:
    """Single-stream self-attention over all pixels: GroupNorm, q/k/v/out linears with bias, residual."""
    heads = cfg.heads(ch)
    return Attention(
        query_dim=ch,
        heads=heads,
        dim_head=ch // heads,
        norm_num_groups=cfg.norm_groups,
        eps=cfg.norm_eps,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        rescale_output_factor=1.0,
    )


class _Encoder(nn.Module):
    """The weights' owner; attribute order = key order of the official checkpoint."""

    def __init__(self, cfg: NoisePredictorConfig) -> None:
        super().__init__()
        chans = cfg.block_channels
        # Sinusoid: cos half first, no frequency shift, max period 10000 (diffusers' default).
        self.time_proj = Timesteps(cfg.time_proj_dim, flip_sin_to_cos=True, downscale_freq_shift=0.0)
        self.time_embedding = TimestepEmbedding(cfg.time_proj_dim, cfg.time_embed_dim, act_fn="silu")
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], kernel_size=3, padding=1)
        self.down_blocks = nn.ModuleList(
            _DownBlock(cfg, chans[max(i - 1, 0)], c, downsample=i < len(chans) - 1) for i, c in enumerate(chans)
        )
        self.mid_block = _MidBlock(cfg, chans[-1])
        self.conv_norm_out = nn.GroupNorm(cfg.norm_groups, chans[-1], eps=cfg.norm_eps)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(chans[-1], cfg.out_channels, kernel_size=3, padding=1)


class NoisePredictor(nn.Module):
    """InvSR's noise predictor, state_dict-compatible with ``noise_predictor_sd_turbo_v5.pth``.

    ``forward(lr01, t)`` takes the LR image in [0, 1] and the *network* timestep (paper value - 1,
    e.g. 199) and returns moments ``[B, 8, h/2, w/2]``: mean (first half), then log-variance clamped
    to ``config.logvar_clamp``. Draw the noise with :func:`sample_from_moments`.
    """

    def __init__(self, config: NoisePredictorConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else NoisePredictorConfig()
        self.encoder = _Encoder(self.config)

    # ---------------------------------------------------------------- forward
    def embed_timestep(self, t: Tensor | int, batch: int, device: torch.device | None = None) -> Tensor:
        """Timestep embedding ``[batch, time_embed_dim]``.

        ``t`` (int, 0-d, [1] or [batch]) is cast to float32 *here*, so that an fp16 export keeps the
        timestep input exact and the sinusoid is computed in fp32; only the MLP runs in the weights' dtype.
        """
        enc = self.encoder
        w = enc.time_embedding.linear_1.weight
        device = device if device is not None else w.device
        t = torch.as_tensor(t, device=device).to(torch.float32).reshape(-1)
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if t.shape[0] not in (1, batch):
                raise ValueError(f"timestep has {t.shape[0]} values for a batch of {batch}: give 1 or {batch}")
        t = t.expand(batch)
        sinusoid = enc.time_proj(t)  # float32, [batch, time_proj_dim], cos half first
        return enc.time_embedding(sinusoid.to(w.dtype))

    def forward(self, lr01: Tensor, t: Tensor | int) -> Tensor:
        """LR image ``[B, in_channels, h, w]`` in [0, 1] and network timestep(s) -> moments ``[B, out, h/2, w/2]``.

        ``h`` and ``w`` must be multiples of ``config.downscale`` (even for the released config).
        """
        if lr01.ndim != 4 or lr01.shape[1] != self.config.in_channels:
            raise ValueError(f"expected an image batch [B, {self.config.in_channels}, h, w], got shape {tuple(lr01.shape)}")
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            f = self.config.downscale
            if lr01.shape[-2] % f or lr01.shape[-1] % f:
                raise ValueError(f"image size {tuple(lr01.shape[-2:])} must be a multiple of {f}")
        enc = self.encoder
        x = (lr01 * 2.0 - 1.0).to(enc.conv_in.weight.dtype)
        temb = self.embed_timestep(t, lr01.shape[0], device=lr01.device).to(x.dtype)
        x = enc.conv_in(x)
        for block in enc.down_blocks:
            x = block(x, temb)
        x = enc.mid_block(x, temb)
        x = enc.conv_out(enc.conv_act(enc.conv_norm_out(x)))
        mean, logvar = x.chunk(2, dim=1)
        lo, hi = self.config.logvar_clamp
        return torch.cat([mean, logvar.clamp(lo, hi)], dim=1)

    def set_attention_processor(self, processor: Any) -> None:
        """Use ``processor`` (a diffusers attention processor) in every attention layer.

        The default is diffusers' SDPA processor; ``diffusers.models.attention_processor.AttnProcessor()``
        computes the softmax explicitly in fp32 (``upcast_softmax``), which some exports prefer.
        """
        for m in self.modules():
            if isinstance(m, Attention):
                m.set_processor(processor)

    # ---------------------------------------------------------------- checkpoints
    @staticmethod
    def config_path(path: str | os.PathLike[str]) -> Path:
        """The JSON config file that lives beside a checkpoint: ``<path without suffix>.json``."""
        return Path(path).with_suffix(".json")

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> NoisePredictor:
        """Load an official-format checkpoint (``noise_predictor_sd_turbo_v5.pth`` or one we saved).

        Accepts a plain state_dict or ``{"state_dict": ...}``, keys optionally prefixed by ``module.``
        and/or ``_orig_mod.``. The config comes from the JSON beside the file if present, else from the
        weights' shapes. Raises :class:`CheckpointError` (one line, naming the file and the first
        mismatched key) for anything that does not fit. The model is returned in eval mode, in fp32.
        """
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: no such checkpoint file")
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # corrupt, truncated, empty, not a pickle, or unsafe pickle content
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: not a PyTorch checkpoint ({type(e).__name__}: {reason[:200]})") from e
        sd = _unwrap_state_dict(obj, path)

        cfg_file = cls.config_path(path)
        if cfg_file.is_file() and cfg_file != path:
            cfg = _read_config_json(cfg_file)
            logger.info("noise predictor config from %s", cfg_file)
        else:
            try:
                cfg = NoisePredictorConfig.from_state_dict_shapes(sd)
            except ValueError as e:
                raise CheckpointError(f"{path}: {e}") from e
            logger.info("noise predictor config inferred from weight shapes of %s: %s", path, cfg)

        with torch.device("meta"):
            model = cls(cfg)
        _check_against(model.state_dict(), sd, path)
        converted = OrderedDict()
        for k, v in sd.items():
            if v.is_floating_point() and v.dtype != torch.float32:
                v = v.to(torch.float32)
            converted[k] = v
        model.load_state_dict(converted, strict=True, assign=True)
        leftover = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.is_meta]
        if leftover:  # defensive: a tensor the checkpoint does not carry would be unusable
            raise CheckpointError(f"{path}: checkpoint leaves {leftover[0]!r} uninitialised")
        logger.info("loaded noise predictor from %s (%d parameters)", path, sum(p.numel() for p in model.parameters()))
        return model.eval()

    def save_checkpoint(self, path: str | os.PathLike[str]) -> Path:
        """Write the official format (plain fp32 state_dict, ``encoder.`` keys) and the JSON config beside it.

        Both files are written to a temporary name in the target folder and then renamed, so a crash
        never leaves a half-written checkpoint under the final name. Returns the checkpoint path.
        """
        path = Path(path)
        cfg_file = self.config_path(path)
        if cfg_file == path:
            raise ValueError(f"{path}: a checkpoint cannot use the .json suffix (the config goes there)")
        path.parent.mkdir(parents=True, exist_ok=True)
        sd = OrderedDict(
            (k, v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).clone().contiguous())
            for k, v in self.state_dict().items()
        )
        atomic_write(path, lambda f: torch.save(sd, f))
        payload = {CONFIG_JSON_KEY: self.config.to_dict()}
        atomic_write(cfg_file, lambda f: f.write(json.dumps(payload, indent=2).encode("utf-8") + b"\n"))
        logger.info("saved noise predictor checkpoint to %s (+ %s)", path, cfg_file.name)
        return path


def sample_from_moments(moments: Tensor, noise: Tensor) -> Tensor:
    """Draw from the predicted Gaussian with the caller's noise: ``mean + exp(0.5 * logvar) * noise``.

    ``moments`` is ``[B, 2C, h, w]`` (mean, then log-variance); ``noise`` is standard normal ``[B, C, h, w]``.
    The noise is an argument so that every backend can be fed the same draw.
    """
    if moments.ndim < 2 or moments.shape[1] % 2:
        raise ValueError(f"moments need an even channel dimension (mean + log-variance), got shape {tuple(moments.shape)}")
    mean, logvar = moments.chunk(2, dim=1)
    if not (torch.jit.is_tracing() or torch.compiler.is_compiling()) and noise.shape != mean.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} does not match the mean's {tuple(mean.shape)}")
    return mean + torch.exp(0.5 * logvar) * noise


# --------------------------------------------------------------------------------------------------
# Checkpoint helpers
# --------------------------------------------------------------------------------------------------
def strip_key_prefixes(key: str, prefixes: tuple[str, ...] = _WRAPPER_PREFIXES) -> str:
    """Remove any run of wrapper prefixes (``module.`` / ``_orig_mod.`` by default) from one state_dict key."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _strip_prefixes(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Remove any run of ``module.`` / ``_orig_mod.`` prefixes from every key."""
    return {strip_key_prefixes(str(k)): v for k, v in sd.items()}


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """Return the tensor dict inside a loaded checkpoint object, with wrapper prefixes stripped."""
    while isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path}: not a noise predictor checkpoint (expected a non-empty state_dict, found {type(obj).__name__})")
    sd = _strip_prefixes(obj)
    if len(sd) != len(obj):
        raise CheckpointError(f"{path}: keys collide after stripping 'module.'/'_orig_mod.' prefixes")
    for k, v in sd.items():
        if not isinstance(v, Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
    return sd


def _check_against(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], path: Path) -> None:
    """Raise a one-line CheckpointError for the first key that is missing, misshapen or unexpected."""
    problems: list[str] = []
    for k, v in expected.items():
        if k not in found:
            problems.append(f"missing key {k!r} (expected shape {tuple(v.shape)})")
        elif tuple(found[k].shape) != tuple(v.shape):
            problems.append(f"wrong shape for {k!r}: expected {tuple(v.shape)}, found {tuple(found[k].shape)}")
    problems.extend(f"unexpected key {k!r} (shape {tuple(v.shape)})" for k, v in found.items() if k not in expected)
    if problems:
        more = f" (and {len(problems) - 1} more mismatches)" if len(problems) > 1 else ""
        raise CheckpointError(f"{path}: does not match the noise predictor: {problems[0]}{more}")


def _read_config_json(cfg_file: Path) -> NoisePredictorConfig:
    """Parse the JSON config saved beside a checkpoint."""
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
        d = data[CONFIG_JSON_KEY]
        if not isinstance(d, Mapping):
            raise TypeError(f"{CONFIG_JSON_KEY!r} is a {type(d).__name__}, not an object")
        return NoisePredictorConfig.from_dict(d)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{cfg_file}: not a valid noise predictor config ({type(e).__name__}: {e})") from e
