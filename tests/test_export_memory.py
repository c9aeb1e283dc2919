"""Export memory (issue 17): the PyTorch weights are released while graphs are quantized, validation
reloads the very same weights, and every finished stage reports the process's memory."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from invsr_export.cli import _memory_note
from invsr_export.exporter import ExportJob, ExportOptions, _reference_models, release_models
from invsr_export.wrappers import build_wrappers
from invsr_train.models.base import load_base, load_predictor


def _job(tmp_path: Path) -> ExportJob:
    base = load_base("synthetic:tiny")  # its own models: releasing them must not touch the session fixtures
    predictor = load_predictor("synthetic", base_name=base.name)
    opts = ExportOptions(out=tmp_path / "out", precision="int8", base="synthetic:tiny", predictor="synthetic")
    return ExportJob(opts, "onnxruntime", None, base, predictor, build_wrappers(base, predictor), {}, 32, (),
                     tmp_path, {}, lambda *a: None)


def _weights(*modules: torch.nn.Module) -> list[torch.Tensor]:
    return [t for m in modules for t in list(m.parameters()) + list(m.buffers())]


def test_release_frees_the_weights_and_validation_reloads_the_same(tmp_path):
    job = _job(tmp_path)
    assert _reference_models(job) == (job.base, job.predictor, job.wrappers)  # not released: the job's own
    before = {k: v.clone() for m in ("unet", "vae") for k, v in getattr(job.base, m).state_dict().items()}
    before_pred = {k: v.clone() for k, v in job.predictor.state_dict().items()}

    release_models(job)
    # every parameter and buffer of the three models (and so of the graph wrappers) holds no memory now
    assert all(t.device.type == "meta" for t in _weights(job.base.unet, job.base.vae, job.predictor))
    assert all(t.device.type == "meta" for w in job.wrappers.values() for t in _weights(w))

    base, predictor, wrappers = _reference_models(job)
    assert base is not job.base and predictor is not job.predictor
    after = {k: v for m in ("unet", "vae") for k, v in getattr(base, m).state_dict().items()}
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(torch.equal(predictor.state_dict()[k], v) for k, v in before_pred.items())
    assert wrappers["unet"].unet is base.unet and wrappers["predictor"].predictor is predictor
    assert all(t.device.type == "cpu" for w in wrappers.values() for t in _weights(w))


def test_finished_stages_report_memory_now_and_peak():
    note = _memory_note()
    match = re.fullmatch(r", memory (\d+\.\d) GB \(peak (\d+\.\d) GB\)", note)
    assert match, note
    now, peak = map(float, match.groups())
    assert 0.05 < now <= peak < 1000  # bytes, not kB or pages: a test process holds 0.05..1000 GB
