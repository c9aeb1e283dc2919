"""Shared fixtures: the tiny synthetic models (built once per session; every test runs offline)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch a model hub


@pytest.fixture(scope="session")
def tiny_base():
    from invsr_train.models.base import load_base

    return load_base("synthetic:tiny")


@pytest.fixture(scope="session")
def tiny_predictor(tiny_base):
    from invsr_train.models.base import load_predictor

    return load_predictor("synthetic", base_name=tiny_base.name)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_base, tiny_predictor):
    from invsr_train.pipeline import ReferencePipeline

    return ReferencePipeline(tiny_base, tiny_predictor)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine two threads are ~5x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory) -> Path:
    """An fp32 ONNX engine folder of synthetic:tiny, exported by invsr-export (runtime parity, README snippets)."""
    pytest.importorskip("onnx")
    from invsr_export.cli import main as export_main

    out = tmp_path_factory.mktemp("tiny_engine") / "engines"
    argv = ["--out", str(out), "--base", "synthetic:tiny", "--predictor", "synthetic", "--precision", "fp32",
            "--backend", "onnxruntime", "--batch", "4", "--no-validate"]  # test_runtime_parity is the validation
    assert export_main(argv) == 0, "invsr-export failed"
    return out
