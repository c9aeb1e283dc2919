"""Every ```python block of README.md runs as written, offline.

The snippets' text is not changed: the world around them is. The working folder holds what they name
(``photo.png``, a bundle in ``models/``, an engine folder ``engines/``), and the hub specs they use
(``stabilityai/sd-turbo``, ``hub``) resolve offline through a hub cache (``HF_HUB_CACHE``) that holds
the tiny synthetic models in the real layouts, exactly as a cache copied from another machine would.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import model_folders as mf

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _snippets() -> list[str]:
    return SNIPPET.findall(README.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_base, tiny_predictor, tiny_engine) -> Path:
    from PIL import Image

    from invsr_train.models.base import PREDICTOR_FILE
    from invsr_train.samples import sample_lr

    root = tmp_path_factory.mktemp("readme")
    work = root / "work"
    work.mkdir()
    lr = sample_lr("chelsea")[40:72, 40:80]  # 32 x 40 LR pixels: one tile
    Image.fromarray((lr * 255).round().astype(np.uint8)).save(work / "photo.png")
    mf.make_bundle(work / "models", tiny_base, tiny_predictor)
    shutil.copytree(tiny_engine, work / "engines")

    hub = root / "hub"
    turbo = mf.make_sd_turbo_folder(root / "turbo", tiny_base)
    mf.make_hub_cache_repo(hub, "stabilityai/sd-turbo", turbo, "d" * 40)
    pred = root / "pred"
    pred.mkdir()
    tiny_predictor.save_checkpoint(pred / PREDICTOR_FILE).with_suffix(".json").unlink()  # the hub has the .pth only
    mf.make_hub_cache_repo(hub, "OAOA/InvSR", pred, "e" * 40)
    return root


def test_readme_has_the_snippets():
    texts = _snippets()
    assert len(texts) >= 3
    assert any("from invsr_train.models import NoisePredictor" in t for t in texts)
    assert any("ReferencePipeline" in t for t in texts) and any("Upscaler" in t for t in texts)


@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index, world, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.chdir(world / "work")
    monkeypatch.setenv("HF_HUB_CACHE", str(world / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("INVSR_TRT_CACHE", str(world / "cache"))
    code = _snippets()[index]
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, f"README.md python block {index + 1}", "exec"), namespace)  # noqa: S102
    if "hr" in namespace:  # the reference pipeline: 4x the photo, in [0, 1]
        hr, lr = namespace["hr"], namespace["lr_rgb01"]
        assert hr.shape == (4 * lr.shape[0], 4 * lr.shape[1], 3) and 0 <= hr.min() and hr.max() <= 1
        assert namespace["base"].info["source"] == "hub"
    if "up" in namespace:  # the runtime: a PIL image back, 4x the size
        assert namespace["out"].size == (4 * namespace["image"].size[0], 4 * namespace["image"].size[1])
    if "same" in namespace:  # the bundle: the predictor file and the base's revision from the lock
        assert namespace["base"].info["source"] == "bundle" and namespace["base"].info["revision"] == "c" * 40
