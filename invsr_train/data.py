"""Training data: folders of HR photos -> random crops, in a reproducible, resumable, sharded order.

What: :func:`find_images` (recursive, sorted), :func:`verify_images` (drops unreadable files with a
warning), :class:`HRCropDataset` (random crop + horizontal flip, keyed by a sample number),
:class:`StepSampler` (which file every sample of every step reads, per rank), :func:`make_loader`.
The LR side is not made here: the trainer degrades whole HR batches on its device
(:mod:`invsr_train.degradations`).

Why stateless: the file and the crop of global sample ``k`` depend only on ``(seed, k)``
(``k = step * batch + rank * per_rank + j``), so a resumed run reads exactly what the uninterrupted
run would have, with any number of DataLoader workers, and ranks read disjoint samples (the
DistributedSampler idea) without sharing any state. Each epoch is a seeded permutation of the files.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from invsr_runtime.imageio import IMAGE_SUFFIXES, ImageReadError, read_picture

logger = logging.getLogger(__name__)

__all__ = [
    "DataError",
    "HRCropDataset",
    "StepSampler",
    "center_crop",
    "find_images",
    "make_loader",
    "random_crop",
    "split_holdout",
    "verify_images",
]


class DataError(RuntimeError):
    """The training data cannot be used (missing or empty folder, no readable image). One line."""


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------
def find_images(folders: Sequence[str | Path]) -> list[Path]:
    """All image files under ``folders`` (recursive, by suffix), sorted; DataError if a folder is unusable."""
    if not folders:
        raise DataError("no data folder given: pass --data DIR (or data.train in the config file)")
    found: list[Path] = []
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.exists():
            raise DataError(f"data folder {root} does not exist")
        if not root.is_dir():
            raise DataError(f"data path {root} is not a folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            examples = ", ".join(sorted(IMAGE_SUFFIXES)[:6])
            raise DataError(f"no image files in data folder {root} (looked for {examples}, ...)")
        found.extend(files)
    return found


def verify_images(paths: Sequence[Path]) -> list[Path]:
    """The files whose header Pillow can read; each other file is skipped with a warning."""
    from PIL import Image

    good: list[Path] = []
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
            if w < 1 or h < 1:
                raise ValueError("empty image")
            good.append(p)
        except Exception as e:  # not an image, truncated header, permission denied...
            logger.warning("skipping unreadable image %s (%s)", p, type(e).__name__)
    if not good:
        raise DataError(f"none of the {len(paths)} image files could be read")
    if len(good) < len(paths):
        logger.warning("skipped %d of %d image files that could not be read", len(paths) - len(good), len(paths))
    return good


def split_holdout(paths: Sequence[Path], count: int, seed: int) -> tuple[list[Path], list[Path]]:
    """(train, held-out): ``count`` files chosen by a seeded shuffle, never more than half the files."""
    count = min(count, len(paths) // 2)
    if count <= 0:
        return list(paths), []
    picked = set(np.random.default_rng([seed, 0x5EED]).permutation(len(paths))[:count].tolist())
    train = [p for i, p in enumerate(paths) if i not in picked]
    held = [p for i, p in enumerate(paths) if i in picked]
    return train, held


# --------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------
def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad an HWC image (right / bottom) so both sides are at least ``size``."""
    h, w = img.shape[:2]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return img
    mode = "reflect" if h > 1 and w > 1 else "edge"
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)


def random_crop(img: np.ndarray, size: int, rng: np.random.Generator, hflip: bool) -> np.ndarray:
    """A ``size`` x ``size`` crop at a random position (padded first if the image is smaller), maybe flipped."""
    img = _pad_to(img, size)
    h, w = img.shape[:2]
    y = int(rng.integers(0, h - size + 1))
    x = int(rng.integers(0, w - size + 1))
    out = img[y : y + size, x : x + size]
    if hflip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` crop (padded first if the image is smaller)."""
    img = _pad_to(img, size)
    h, w = img.shape[:2]
    y, x = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[y : y + size, x : x + size])


class HRCropDataset(Dataset):
    """HR crops ``[3, crop, crop]`` float32 in [0, 1]; item ``(index, key)``, the crop drawn from ``(seed, key)``.

    A file that fails to decode is skipped with a warning (once per file and process) and the next
    file is used instead, so one bad file never stops a run.
    """

    def __init__(self, paths: Sequence[Path], crop: int, hflip: bool = True, seed: int = 0) -> None:
        if not paths:
            raise DataError("no training images")
        self.paths = list(paths)
        self.crop = crop
        self.hflip = hflip
        self.seed = seed
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> torch.Tensor:
        index, key = item
        reason = "every file was skipped earlier"
        for attempt in range(len(self.paths)):
            i = (index + attempt) % len(self.paths)
            if i in self._bad:
                continue
            try:
                img = read_picture(self.paths[i]).rgb
            except (ImageReadError, OSError, ValueError) as e:
                self._bad.add(i)
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                logger.warning("skipping image %s: %s", self.paths[i], reason)
                continue
            rng = np.random.default_rng([self.seed, key])
            crop = random_crop(img, self.crop, rng, self.hflip)
            return torch.from_numpy(crop).permute(2, 0, 1).contiguous()
        raise DataError(f"none of the {len(self.paths)} training images could be decoded (last: {reason}); "
                        "check the --data folders")


# --------------------------------------------------------------------------------------------------
# Order
# --------------------------------------------------------------------------------------------------
class StepSampler(Sampler[list[tuple[int, int]]]):
    """Yields this rank's micro-batches of ``(file index, sample key)`` from ``start_step`` on, forever.

    Step ``s`` uses global samples ``s * batch .. (s + 1) * batch - 1``; rank ``r`` takes the slice
    ``r * per_rank .. (r + 1) * per_rank - 1`` of them, cut into micro-batches. Sample ``k`` reads
    file ``perm(k // n)[k % n]``, ``perm(e)`` a seeded permutation per epoch.
    """

    def __init__(
        self, num_files: int, batch: int, micro: int, seed: int, start_step: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        if batch % world or (batch // world) % micro:
            raise DataError(f"global batch {batch} must split into {world} rank(s) x whole micro-batches of {micro}")
        self.n = num_files
        self.batch = batch
        self.micro = micro
        self.per_rank = batch // world
        self.seed = seed
        self.start_step = start_step
        self.rank = rank
        self._perm: tuple[int, np.ndarray] | None = None

    def file_index(self, k: int) -> int:
        """File read by global sample ``k``."""
        epoch = k // self.n
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n))
        return int(self._perm[1][k % self.n])

    def step_samples(self, step: int) -> list[list[tuple[int, int]]]:
        """This rank's micro-batches at ``step``."""
        first = step * self.batch + self.rank * self.per_rank
        keys = range(first, first + self.per_rank)
        items = [(self.file_index(k), k) for k in keys]
        return [items[i : i + self.micro] for i in range(0, len(items), self.micro)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            yield from self.step_samples(step)
            step += 1

    def __len__(self) -> int:  # DataLoader asks; the stream is unbounded
        return 2**62


def make_loader(dataset: HRCropDataset, sampler: StepSampler, workers: int, pin_memory: bool = False) -> DataLoader:
    """An endless DataLoader of HR micro-batches ``[micro, 3, crop, crop]`` in the sampler's order."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
    )
