"""InvSR's fixed text prompt and its embedding (computed once, then cached).

InvSR always conditions SD-Turbo on the same prompt, so the text encoder is only needed to turn that
prompt into one ``[1, 77, D]`` tensor. That tensor is cached on disk (and shipped as
``prompt_embeds.npy`` in engine folders) so that nothing downstream needs a text encoder.

Cache location: ``invsr_runtime.cache.cache_root()`` (``$INVSR_TRT_CACHE``, default ``~/.cache/invsr_trt``),
file ``prompt_embeds/<key>.npy`` with ``key`` a hash of (model source, text-encoder fingerprint or hub
revision, prompt text).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from invsr_runtime.cache import cache_root
from invsr_runtime.tempfiles import atomic_write

if TYPE_CHECKING:  # heavy imports only where they are used
    import torch

logger = logging.getLogger(__name__)

#: The prompt InvSR conditions every UNet call on (INVSR.md, "Components").
PROMPT = (
    "Cinematic, high-contrast, photo-realistic, 8k, ultra HD, meticulous detailing, "
    "hyper sharpness, perfect without deformations"
)
#: Negative prompt, used only with guidance > 1 (never by the default pipeline). Kept verbatim,
#: including the missing space after "noisy,".
NEGATIVE_PROMPT = (
    "Low quality, blurring, jpeg artifacts, deformed, over-smooth, cartoon, noisy,"
    "painting, drawing, sketch, oil painting"
)
#: Token length of the CLIP text tower: embeddings are always [1, 77, D].
PROMPT_MAX_LENGTH = 77
#: Standard deviation of the seeded stand-in embedding used by synthetic bases.
SYNTHETIC_PROMPT_STD = 0.5
#: Name of a precomputed embedding at the top level of a diffusers folder (used as is when present).
FOLDER_EMBEDS_FILE = "prompt_embeds.npy"
#: Bump when the way embeddings are computed changes, so old cache entries are ignored.
_CACHE_FORMAT = 1
#: Bytes hashed at each end of a weight file for its fingerprint (cheap even for 1.3 GB encoders).
_FINGERPRINT_CHUNK = 1 << 20


class PromptEmbedError(RuntimeError):
    """A prompt embedding could not be read or computed (one line, says what was wrong)."""


def prompt_cache_key(source: str, fingerprint: str, prompt: str = PROMPT) -> str:
    """Hash naming one cached embedding: same model files + same prompt -> same key on any machine."""
    payload = json.dumps([_CACHE_FORMAT, source, fingerprint, prompt, PROMPT_MAX_LENGTH])
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def prompt_cache_path(source: str, fingerprint: str, prompt: str = PROMPT) -> Path:
    """Where the embedding for (source, fingerprint, prompt) is cached."""
    return cache_root() / "prompt_embeds" / f"{prompt_cache_key(source, fingerprint, prompt)}.npy"


def text_encoder_fingerprint(folder: str | os.PathLike[str]) -> str:
    """Cheap content fingerprint of a diffusers folder's ``text_encoder/`` and ``tokenizer/``.

    Every file contributes its relative path, size and a SHA-256 of its first and last MiB, so a
    changed encoder or tokenizer gives a new cache key without hashing gigabytes on every load.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for sub in ("text_encoder", "tokenizer"):
        root = folder / sub
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for path in files:
            digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
            digest.update(_ends_digest(path))
    return digest.hexdigest()


def _ends_digest(path: Path) -> bytes:
    """SHA-256 of the first and last :data:`_FINGERPRINT_CHUNK` bytes of a file."""
    h = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        h.update(f.read(_FINGERPRINT_CHUNK))
        if size > 2 * _FINGERPRINT_CHUNK:
            f.seek(size - _FINGERPRINT_CHUNK)
            h.update(f.read(_FINGERPRINT_CHUNK))
        elif size > _FINGERPRINT_CHUNK:
            h.update(f.read())
    return h.digest()


def synthetic_prompt_embeds(dim: int, seed: int) -> np.ndarray:
    """Deterministic stand-in embedding for synthetic bases: N(0, 1) * 0.5, float32 [1, 77, dim].

    Drawn from a private seeded generator (numpy PCG64), so the global RNGs are untouched and the
    same seed gives the same array on every machine.
    """
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((1, PROMPT_MAX_LENGTH, dim)) * SYNTHETIC_PROMPT_STD).astype(np.float32)


def encode_prompt(tokenizer: Any, text_encoder: Any, prompt: str = PROMPT) -> np.ndarray:
    """Run the CLIP text tower on ``prompt`` the way diffusers' SD pipelines do; float32 [1, 77, D].

    Tokens are padded to 77 and truncated; the embedding is the encoder's last hidden state (output 0),
    with no attention mask (SD 2.x text encoders are run without one).
    """
    import torch

    tokens = tokenizer(
        prompt,
        padding="max_length",
        max_length=PROMPT_MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    with torch.inference_mode():
        hidden = text_encoder(tokens.input_ids.to(device))[0]
    return hidden.float().cpu().numpy()


def _load_tokenizer(folder: Path) -> Any:
    """CLIP tokenizer from ``folder/tokenizer`` (a function of its own so tests can replace it)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder), subfolder="tokenizer")


def _load_text_encoder(folder: Path) -> Any:
    """CLIP text model from ``folder/text_encoder``, fp32, eval (replaced by tests to prove caching)."""
    from transformers import CLIPTextModel

    model = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder")
    return model.float().eval()


def compute_folder_prompt_embeds(folder: str | os.PathLike[str], prompt: str = PROMPT) -> np.ndarray:
    """Load the tokenizer + text encoder of a diffusers folder and embed ``prompt`` (no cache)."""
    folder = Path(folder)
    try:
        tokenizer = _load_tokenizer(folder)
        text_encoder = _load_text_encoder(folder)
    except Exception as e:  # missing folder, bad config, unreadable weights...
        raise PromptEmbedError(
            f"could not load the tokenizer/text_encoder of {folder} to embed the prompt "
            f"({type(e).__name__}: {first_line(e)}); put a precomputed {FOLDER_EMBEDS_FILE} in the folder"
        ) from e
    logger.info("computing the prompt embedding with the text encoder of %s", folder)
    return encode_prompt(tokenizer, text_encoder, prompt)


def folder_prompt_embeds(
    folder: str | os.PathLike[str],
    prompt: str = PROMPT,
    source: str | None = None,
    fingerprint: str | None = None,
) -> tuple[np.ndarray, str]:
    """The prompt embedding of a diffusers folder, computed at most once per model and prompt.

    Order: ``folder/prompt_embeds.npy`` (for the default prompt only), then the cache, then the text
    encoder (result written to the cache). ``source`` names the model in the cache key (default: the
    folder's absolute path; a hub id for snapshots) and ``fingerprint`` identifies its text encoder
    (default: :func:`text_encoder_fingerprint`; a hub revision for snapshots).

    Returns the float32 ``[1, 77, D]`` array and where it came from: ``"folder"``, ``"cache"`` or
    ``"computed"``.
    """
    folder = Path(folder)
    shipped = folder / FOLDER_EMBEDS_FILE
    if prompt == PROMPT and shipped.is_file():
        logger.info("prompt embedding from %s", shipped)
        return _read_embeds(shipped), "folder"

    source = source or str(folder.resolve())
    fingerprint = fingerprint or text_encoder_fingerprint(folder)
    cached = prompt_cache_path(source, fingerprint, prompt)
    if cached.is_file():
        try:
            embeds = _read_embeds(cached)
        except PromptEmbedError as e:
            logger.warning("ignoring a bad cache entry: %s", e)
        else:
            logger.info("prompt embedding from cache %s", cached)
            return embeds, "cache"

    embeds = compute_folder_prompt_embeds(folder, prompt)
    _write_cache(cached, embeds)
    return embeds, "computed"


def _read_embeds(path: Path) -> np.ndarray:
    """Read a saved embedding, accepting [77, D] or [1, 77, D]; float32 [1, 77, D]."""
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as e:
        raise PromptEmbedError(f"{path}: not a .npy array ({type(e).__name__}: {first_line(e)})") from e
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[:2] != (1, PROMPT_MAX_LENGTH) or not np.isfinite(arr).all():
        raise PromptEmbedError(
            f"{path}: expected a finite prompt embedding of shape [1, {PROMPT_MAX_LENGTH}, D], got {list(arr.shape)}"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def _write_cache(path: Path, embeds: np.ndarray) -> None:
    """Save to the cache atomically (temp file + rename); a read-only cache only costs a warning."""
    try:
        atomic_write(path, lambda f: np.save(f, embeds))
    except OSError as e:
        logger.warning("could not cache the prompt embedding at %s: %s", path, e)
        return
    logger.info("cached the prompt embedding at %s", path)


def to_tensor(embeds: np.ndarray, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.Tensor:
    """A [1, 77, D] numpy embedding as a torch tensor on ``device`` / ``dtype`` (fp32 if None)."""
    import torch

    return torch.from_numpy(np.array(embeds, dtype=np.float32)).to(device=device, dtype=dtype or torch.float32)


def first_line(e: BaseException) -> str:
    """First line of an exception message (messages from the hub and transformers span several)."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__
