"""Shared fixtures: the tiny synthetic models (built once per session; every test runs offline)."""
from __future__ import annotations

import os

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
