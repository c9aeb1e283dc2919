"""Ray: `invsr-run --ray` (Ray Data actor pool) and `invsr-serve --ray` (Ray Serve replicas) on a local
cluster of 2 CPUs: same bytes as the plain runtime, failures collected, a killed worker survived, resume."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from invsr_runtime import cli  # noqa: E402
from test_runtime_toyengine import build_toy_engine  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    return build_toy_engine(tmp_path_factory.mktemp("toy") / "engine", tile=16, batch=2)


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0.3 * np.sin(x / 3.0 + y / 5.0)], axis=2)
    return (np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8)


def _mixed_folder(folder: Path, big: int = 0) -> Path:
    """12 images of mixed formats and sizes (one in a subfolder) and one corrupt file."""
    folder.mkdir(parents=True)
    (folder / "sub").mkdir()
    makers = [
        ("a.png", lambda: Image.fromarray(_photo(20, 31, 1))), ("b.jpg", lambda: Image.fromarray(_photo(17, 17, 2))),
        ("c.webp", lambda: Image.fromarray(_photo(9, 40, 3))), ("d.bmp", lambda: Image.fromarray(_photo(33, 12, 4))),
        ("e.tif", lambda: Image.fromarray((np.arange(400, dtype=np.uint16).reshape(20, 20) * 150))),
        ("f.png", lambda: Image.fromarray(_photo(16, 16, 5)).convert("L")),
        ("g.png", lambda: Image.fromarray(np.dstack([_photo(14, 22, 6), np.full((14, 22), 90, np.uint8)]), "RGBA")),
        ("h.gif", lambda: Image.fromarray(_photo(12, 18, 7)).convert("P")),
        ("i.png", lambda: Image.fromarray(_photo(1, 1, 8))), ("j.png", lambda: Image.fromarray(_photo(5, 64, 9))),
        ("k.jpg", lambda: Image.fromarray(_photo(24 + big, 24 + big, 10))),
        ("sub/l.png", lambda: Image.fromarray(_photo(19 + big, 23 + big, 11))),
    ]
    for name, make in makers:
        make().save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _outputs(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "failures.jsonl"}


def test_offline_job_equals_plain_run_and_resumes(cluster, engine, tmp_path, capsys):
    inputs = _mixed_folder(tmp_path / "in")
    args = [str(engine), str(inputs), "--recursive", "--steps", "2", "--seed", "5"]
    assert cli.run(args + ["-o", str(tmp_path / "plain")]) == 1  # the corrupt file fails, the rest is written
    code = cli.run(args + ["-o", str(tmp_path / "ray"), "--ray", "--workers", "2"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err
    plain, distributed = _outputs(tmp_path / "plain"), _outputs(tmp_path / "ray")
    assert len(plain) == 12 and plain == distributed
    failures = [json.loads(line) for line in (tmp_path / "ray" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == 1 and "broken.png" in failures[0]["error"] and "not an image" in failures[0]["error"]
    assert not [p for p in (tmp_path / "ray").rglob("*") if p.name.startswith(".")]  # no partial files

    (tmp_path / "ray" / "k.png").unlink()  # a re-run resumes: only the missing output is redone
    assert cli.run(args + ["-o", str(tmp_path / "ray"), "--ray", "--workers", "2"]) == 1
    out = capsys.readouterr().out
    assert "done 1, skipped 11, failed 1" in out
    assert _outputs(tmp_path / "ray") == plain


def test_uri_inputs(cluster, engine, tmp_path, capsys):
    inputs = _mixed_folder(tmp_path / "in")
    (inputs / "broken.png").unlink()
    assert cli.run([str(engine), str(inputs), "-o", str(tmp_path / "plain")]) == 0
    assert cli.run([str(engine), f"file://{inputs}", "-o", str(tmp_path / "uri"), "--ray"]) == 0
    assert _outputs(tmp_path / "uri") == _outputs(tmp_path / "plain")
    assert cli.run([str(engine), f"file://{inputs}", "-o", str(tmp_path / "x")]) == 1  # URIs need --ray
    assert "add --ray" in capsys.readouterr().err


def test_killed_worker_is_replaced(cluster, engine, tmp_path, capsys):
    import psutil

    inputs = _mixed_folder(tmp_path / "in", big=400)  # two images of ~3,000 tiles: seconds of work
    (inputs / "broken.png").unlink()
    out = tmp_path / "ray"
    killed: list[str] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            if out.exists() and any(out.iterdir()):  # the job is under way: kill a worker while it works
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    title = " ".join(proc.info["cmdline"] or [])
                    if title.startswith("ray::MapWorker(MapBatches(UpscaleWorker))"):  # Ray names its actors so
                        os.kill(proc.info["pid"], signal.SIGKILL)  # a crash, as an OOM kill or a lost node
                        killed.append(title)
                        return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    code = cli.run([str(engine), str(inputs), "--recursive", "-o", str(out), "--ray", "--workers", "2"])
    killer.join()
    assert killed, "the job ended before a worker could be killed"
    assert code == 0, capsys.readouterr().err
    assert cli.run([str(engine), str(inputs), "--recursive", "-o", str(tmp_path / "plain")]) == 0
    assert _outputs(out) == _outputs(tmp_path / "plain")
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]


def test_serve_on_ray_two_replicas_same_bytes(cluster, engine, tmp_path, capsys):
    import httpx

    from invsr_serve import ray_serve
    from invsr_serve.config import ServeConfig
    from serve_helpers import free_port

    port = free_port()
    ray_serve.start(ServeConfig(engine_dir=engine), ray_serve.RayServeOptions(replicas=2), "127.0.0.1", port)
    try:
        photos = {f"p{i}.png": Image.fromarray(_photo(15 + i, 21, i)) for i in range(6)}
        for name, image in photos.items():
            image.save(tmp_path / name)
        assert cli.run([str(engine), *[str(tmp_path / n) for n in photos], "-o", str(tmp_path / "out"),
                        "--seed", "2"]) == 0
        results: dict[str, httpx.Response] = {}

        def post(name: str) -> None:
            results[name] = httpx.post(f"http://127.0.0.1:{port}/v1/upscale", params={"seed": "2"},
                                       content=(tmp_path / name).read_bytes(),
                                       headers={"Content-Type": "image/png"}, timeout=120)

        threads = [threading.Thread(target=post, args=(n,)) for n in photos for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in photos:
            assert results[name].status_code == 200, results[name].text
            assert results[name].content == (tmp_path / "out" / name).read_bytes()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json() == {"status": "ready"}
    finally:
        ray_serve.stop()


def test_ray_scale_benchmark_dry_run(cluster, engine, tmp_path):
    """benchmarks.ray_scale end to end on the test cluster (1 worker, 2 images, no warm-up): every image
    written by both the plain loop and the Ray workers, each on the simulated device (200 ms per tile,
    far slower than the toy engine, so an image taking less means the backend was not replaced)."""
    from benchmarks import ray_scale

    code = ray_scale.main([str(engine), "--out", str(tmp_path / "report"), "--workers", "1", "--images", "2",
                           "--size", "24", "--ms-per-tile", "200", "--repeats", "1", "--warmup", "0"])
    result = json.loads((tmp_path / "report" / "ray_scale.json").read_text())
    assert code == 0 and result["plain"]["done"] == [2] and result["ray"]["1"]["done"] == [2]
    assert result["plain"]["last"]["device_calls"] >= 2 * 2  # 24x24 on tile 16: >= 4 tiles, batch 2
    assert result["ray"]["1"]["last"]["image_seconds_median"] >= 2 * 2 * 0.2
    assert "--ray --workers 1" in (tmp_path / "report" / "ray_scale.md").read_text()
