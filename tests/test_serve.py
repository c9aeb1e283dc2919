"""invsr-serve: a real server on loopback, a real HTTP client. Same bytes as invsr-run, every error
status, API key, limits, metrics, SIGTERM drain."""
from __future__ import annotations

import io
import json
import signal
import struct
import socket
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from invsr_runtime import cli  # noqa: E402
from serve_helpers import start_server  # noqa: E402
from test_runtime_toyengine import build_toy_engine  # noqa: E402


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Path:
    return build_toy_engine(tmp_path_factory.mktemp("toy") / "engine", tile=16, batch=2)


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    srv = start_server(engine, log=tmp_path_factory.mktemp("log") / "serve.log")
    yield srv
    srv.stop()


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([x / max(w - 1, 1), y / max(h - 1, 1), 0.5 + 0.3 * np.sin(x / 3.0 + y / 5.0)], axis=2)
    return (np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1) * 255).astype(np.uint8)


def _png(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kwargs.pop("format", "PNG"), **kwargs)
    return buf.getvalue()


INPUTS = {
    "rgb.png": lambda: Image.fromarray(_photo(20, 37)),
    "gray16.png": lambda: Image.fromarray(np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 130),
    "rgba.png": lambda: Image.fromarray(np.dstack([_photo(21, 18), np.full((21, 18), 100, np.uint8)]), "RGBA"),
}


@pytest.mark.parametrize("name", sorted(INPUTS))
@pytest.mark.parametrize("query", [{"steps": "2", "seed": "3"},
                                   {"timesteps": "150,50", "color_fix": "wavelet", "format": "webp"},
                                   {"format": "jpg", "color_fix": "ycbcr"}])
def test_same_bytes_as_invsr_run(server, engine, tmp_path, capsys, name, query):
    src = tmp_path / name
    INPUTS[name]().save(src)
    argv = [engine, src, "-o", tmp_path / "out"]
    for key, value in query.items():
        argv += [f"--{key.replace('_', '-')}", value]
    assert cli.run([str(a) for a in argv]) == 0, capsys.readouterr().err
    fmt = query.get("format", "png")
    expected = (tmp_path / "out" / f"{src.stem}.{fmt}").read_bytes()
    r = httpx.post(server.url + "/v1/upscale", params=query, content=src.read_bytes(),
                   headers={"Content-Type": "image/png"}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}[fmt]
    assert r.content == expected


def test_multipart_upload_same_bytes(server, tmp_path):
    data = _png(INPUTS["rgb.png"]())
    raw = httpx.post(server.url + "/v1/upscale", content=data, headers={"Content-Type": "image/png"}, timeout=60)
    multi = httpx.post(server.url + "/v1/upscale", files={"image": ("a.png", data, "image/png")}, timeout=60)
    assert raw.status_code == multi.status_code == 200
    assert raw.content == multi.content
    out = Image.open(io.BytesIO(raw.content))
    assert out.size == (37 * 4, 20 * 4)


def _huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height (it never has to be decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("params,body,ctype,status,words", [
    ({"steps": "9"}, None, "image/png", 400, "steps"),
    ({"steps": "x"}, None, "image/png", 400, "integer"),
    ({"seed": "-1"}, None, "image/png", 400, "seed"),
    ({"timesteps": "100,200"}, None, "image/png", 400, "decreasing"),
    ({"color_fix": "magic"}, None, "image/png", 400, "color_fix"),
    ({"format": "gif"}, None, "image/png", 400, "format"),
    ({"bogus": "1"}, None, "image/png", 400, "unknown parameter"),
    ({}, b"hello, not an image", "image/png", 415, "not an image"),
    ({}, b"{}", "application/json", 415, "content-type"),
    ({}, b"", "image/png", 422, "empty"),
    ({}, "truncated", "image/png", 422, "corrupt"),
    ({}, _huge_png_header(5000, 5000), "image/png", 413, "max-pixels"),  # checked from the header
    ({}, _huge_png_header(30000, 30000), "image/png", 413, "too large"),  # Pillow's bomb guard
])
def test_error_statuses(server, params, body, ctype, status, words):
    if body is None:
        body = _png(INPUTS["rgb.png"]())
    elif body == "truncated":
        body = _png(INPUTS["rgb.png"]())[:-40]
    r = httpx.post(server.url + "/v1/upscale", params=params, content=body, headers={"Content-Type": ctype},
                   timeout=60)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    message = r.json()["error"]
    assert words.lower() in message.lower() and "\n" not in message and "Traceback" not in message


def test_unknown_route_and_method_are_json(server):
    assert httpx.get(server.url + "/nope").json() == {"error": "Not Found"}
    r = httpx.get(server.url + "/v1/upscale")
    assert r.status_code == 405 and "error" in r.json()


def test_health_ready_docs_page(server):
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/v1/upscale" in httpx.get(server.url + "/openapi.json").json()["paths"]
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and 'id="slider"' in page.text


def test_metrics_count_requests_and_tiles(server):
    httpx.post(server.url + "/v1/upscale", content=_png(INPUTS["rgb.png"]()),
               headers={"Content-Type": "image/png"}, timeout=60)
    httpx.post(server.url + "/v1/upscale", params={"steps": "0"}, content=b"x", timeout=60)
    text = httpx.get(server.url + "/metrics/").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values['invsr_requests_total{status="200"}'] >= 1
    assert values['invsr_requests_total{status="400"}'] >= 1
    assert values["invsr_tiles_total"] >= 6  # a 20x37 image is 2x3 tiles of 16 px at stride 8... at least 6
    assert 0 < values["invsr_batch_fill_ratio"] <= 1
    assert values["invsr_queue_depth"] == 0
    assert 0 <= values["invsr_device_busy_ratio"] <= 1
    assert values["invsr_request_seconds_count"] >= 1


def test_access_log_is_one_json_line_per_request(server):
    r = httpx.post(server.url + "/v1/upscale", params={"steps": "1"}, content=_png(INPUTS["rgb.png"]()),
                   headers={"Content-Type": "image/png", "X-Request-Id": "probe-123"}, timeout=60)
    assert r.headers["x-request-id"] == "probe-123"
    time.sleep(0.2)
    lines = [json.loads(line) for line in server.log_text().splitlines() if line.startswith("{")]
    mine = [entry for entry in lines if entry.get("id") == "probe-123"]
    assert len(mine) == 1
    assert mine[0]["status"] == 200 and mine[0]["size"] == "37x20" and mine[0]["steps"] == 1 and mine[0]["ms"] > 0


@pytest.fixture(scope="module")
def strict_server(engine, tmp_path_factory):
    srv = start_server(engine, ["--api-key-env", "INVSR_TEST_KEY", "--max-body-mb", "0.01"],
                       env={"INVSR_TEST_KEY": "s3cret"}, log=tmp_path_factory.mktemp("log") / "strict.log")
    yield srv
    srv.stop()


def test_api_key(strict_server):
    data = _png(INPUTS["rgb.png"]())
    url = strict_server.url + "/v1/upscale"
    assert httpx.post(url, content=data, headers={"Content-Type": "image/png"}).status_code == 401
    wrong = httpx.post(url, content=data, headers={"Content-Type": "image/png", "Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
    ok = httpx.post(url, content=data, headers={"Content-Type": "image/png", "Authorization": "Bearer s3cret"},
                    timeout=60)
    assert ok.status_code == 200
    assert httpx.get(strict_server.url + "/metrics/").status_code == 401
    assert httpx.get(strict_server.url + "/healthz").status_code == 200  # probes carry no key


def test_body_limit_from_header_and_from_stream(strict_server):
    url = strict_server.url + "/v1/upscale"
    auth = {"Authorization": "Bearer s3cret", "Content-Type": "image/png"}
    big = b"\0" * 20_000
    r = httpx.post(url, content=big, headers=auth)
    assert r.status_code == 413 and "max-body-mb" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b"\0" * 1000

    r = httpx.post(url, content=chunks(), headers=auth)
    assert r.status_code == 413


def test_missing_api_key_env_is_one_line(engine, capsys):
    from invsr_serve.cli import run

    assert run([str(engine), "--api-key-env", "INVSR_SURELY_UNSET_VAR"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "INVSR_SURELY_UNSET_VAR" in err and "\n" not in err


def test_bad_engine_folder_is_one_line(tmp_path, capsys):
    from invsr_serve.cli import run

    assert run([str(tmp_path), "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_queue_full_is_503_with_retry_after_and_timeout_is_504(engine, tmp_path):
    srv = start_server(engine, ["--max-queue", "1", "--request-timeout", "2"], log=tmp_path / "q.log")
    try:
        big = _png(Image.fromarray(_photo(400, 400)))
        results: list[httpx.Response] = []

        def post() -> None:
            results.append(httpx.post(srv.url + "/v1/upscale", params={"steps": "5"}, content=big,
                                      headers={"Content-Type": "image/png"}, timeout=60))

        threads = [threading.Thread(target=post) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in results)
        busy = [r for r in results if r.status_code == 503]
        assert busy, statuses
        assert all(r.headers.get("retry-after") for r in busy)
        assert set(statuses) <= {503, 504, 200}
        assert 504 in statuses or 200 in statuses
        timeouts = [r for r in results if r.status_code == 504]
        assert all("request-timeout" in r.json()["error"] for r in timeouts)
        assert httpx.get(srv.url + "/healthz").status_code == 200  # the failures disturbed nothing
    finally:
        srv.stop()


def test_a_full_queue_refuses_before_reading_the_body(engine, tmp_path):
    """With every queue slot taken, a new upload gets its 503 at once, before its (50 MB) body is sent."""
    srv = start_server(engine, ["--max-queue", "1", "--request-timeout", "30"], log=tmp_path / "early.log")
    # big enough to hold the slot for seconds (200x200 took 0.2 s: the probe below could miss it)
    big = _png(Image.fromarray(_photo(640, 640)))
    thread = threading.Thread(target=lambda: httpx.post(srv.url + "/v1/upscale", params={"steps": "5"}, content=big,
                                                        headers={"Content-Type": "image/png"}, timeout=120))
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while "invsr_queue_depth 1.0" not in httpx.get(srv.url + "/metrics/").text:  # the slot is taken
            assert time.monotonic() < deadline, "the first request was never admitted"
            assert thread.is_alive(), "the first request finished before it was seen holding the slot"
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/upscale HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 50000000\r\n\r\n")  # headers only: the body never comes
            answer = b""
            while b"queue is full" not in answer:  # headers and body may come in separate segments
                chunk = sock.recv(65536)
                assert chunk, f"connection closed after {answer!r}"
                answer += chunk
        text = answer.decode("latin-1")
        assert text.startswith("HTTP/1.1 503") and "retry-after" in text.lower(), text[:300]
    finally:
        thread.join()
        srv.stop()


def test_sigterm_drains_in_flight_requests(engine, tmp_path):
    srv = start_server(engine, log=tmp_path / "drain.log")
    big = _png(Image.fromarray(_photo(200, 200)))
    result: dict = {}

    def post() -> None:
        result["r"] = httpx.post(srv.url + "/v1/upscale", params={"steps": "3"}, content=big,
                                 headers={"Content-Type": "image/png"}, timeout=120)

    thread = threading.Thread(target=post)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the request is admitted
        text = httpx.get(srv.url + "/metrics/").text
        if "invsr_queue_depth 1.0" in text:
            break
        time.sleep(0.02)
    srv.proc.send_signal(signal.SIGTERM)
    thread.join(120)
    assert result["r"].status_code == 200
    assert Image.open(io.BytesIO(result["r"].content)).size == (800, 800)
    assert srv.proc.wait(60) == 0
    srv.stop()


def test_tiles_of_concurrent_requests_share_engine_batches(engine):
    """8 one-tile requests at once on a device of batch 4 (100 ms per tile): a few full batches, not 8."""
    from benchmarks.serve_load import _free_port, _serve_in_thread
    from invsr_runtime.backends.simulated import SimulatedDevice
    from invsr_serve.app import create_app, open_upscaler
    from invsr_serve.config import ServeConfig

    devices: list[SimulatedDevice] = []

    def factory(config):
        upscaler = open_upscaler(config)
        upscaler.backend = SimulatedDevice(tile=16, scale=4, batch=4, ms_per_tile=100)
        devices.append(upscaler.backend)
        return upscaler

    app = create_app(ServeConfig(engine_dir=engine, max_batch_wait_ms=200), upscaler_factory=factory)
    port = _free_port()
    server, thread = _serve_in_thread(app, port)
    try:
        body = _png(Image.fromarray(_photo(16, 16)))
        before = len(devices[0].batches)  # the warm-up's batch
        results: list[int] = []

        def post() -> None:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/upscale", content=body,
                           headers={"Content-Type": "image/png"}, timeout=60)
            results.append(r.status_code)

        threads = [threading.Thread(target=post) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 8
        assert len(devices[0].batches) - before <= 4  # 8 tiles in 2-4 batches of 4, not 8 padded batches
        fill = float([line for line in httpx.get(f"http://127.0.0.1:{port}/metrics/").text.splitlines()
                      if line.startswith("invsr_batch_fill_ratio")][0].split()[1])
        assert fill > 0.5
    finally:
        server.should_exit = True
        thread.join(60)


def test_an_alpha_picture_does_not_hold_up_the_others(engine):
    """Finishing a picture with alpha (its own resize) runs off the scheduler's shared blend thread: a plain
    picture submitted right after it is done while the alpha one is still being finished."""
    from invsr_runtime.backends.simulated import SimulatedDevice
    from invsr_runtime.imageio import Picture
    from invsr_runtime.upscaler import Upscaler
    from invsr_serve.codec import UpscaleParams
    from invsr_serve.engine import UpscaleEngine

    upscaler = Upscaler(engine)
    upscaler.backend = SimulatedDevice(tile=16, scale=4, batch=1)
    release = threading.Event()
    real_finish = upscaler.finish_picture

    def slow_finish(pic, rgb):  # stands for a large alpha plane's resize
        if pic.alpha is not None:
            assert release.wait(30)
        return real_finish(pic, rgb)

    upscaler.finish_picture = slow_finish
    service = UpscaleEngine(upscaler, max_queue=4, max_inflight_pixels=10**7)
    try:
        schedule = upscaler.schedule(1)
        rgba = Picture(rgb=np.full((16, 16, 3), 0.5, np.float32), alpha=np.full((16, 16), 0.25, np.float32))
        with_alpha = service.submit(rgba, schedule, UpscaleParams())
        plain = service.submit(Picture(rgb=np.full((16, 16, 3), 0.5, np.float32)), schedule, UpscaleParams())
        assert plain.result(10).rgb.shape == (64, 64, 3) and not with_alpha.done()
        release.set()
        out = with_alpha.result(10)
        assert out.alpha.shape == (64, 64) and out.alpha.dtype == out.rgb.dtype
    finally:
        release.set()
        service.close()


def test_a_cancelled_request_is_dropped_quietly(engine, caplog):
    """A request that gave up (504, client gone) cancels its future: its image's tiles not yet cut never
    run (no device time for nobody), and no result arriving later may raise InvalidStateError inside the
    callback (it was logged as a traceback per request)."""
    from invsr_runtime.backends.simulated import SimulatedDevice
    from invsr_runtime.imageio import Picture
    from invsr_runtime.upscaler import Upscaler
    from invsr_serve.codec import UpscaleParams
    from invsr_serve.engine import UpscaleEngine

    upscaler = Upscaler(engine)
    upscaler.backend = SimulatedDevice(tile=16, scale=4, batch=2, ms_per_tile=100)
    service = UpscaleEngine(upscaler, max_queue=4, max_inflight_pixels=10**7)
    try:
        pic = Picture(rgb=np.full((16, 16, 3), 0.5, np.float32))
        schedule = upscaler.schedule(1)
        gone = service.submit(Picture(rgb=np.full((160, 160, 3), 0.5, np.float32)), schedule, UpscaleParams())
        assert gone.cancel()  # 361 tiles of 100 ms: 36 s of device time if they ran
        kept = service.submit(pic, schedule, UpscaleParams())
        assert kept.result(30).rgb.shape == (64, 64, 3)
        time.sleep(0.2)  # the first picture's callback has run by now (results come back in order)
    finally:
        service.close()
    assert gone.cancelled()
    # at most what was already cut when the cancel came (queued batches + one on the device + one being
    # filled, batch 2) and the kept picture's tile: far from the 361 tiles of the cancelled picture
    in_flight = 2 * (upscaler.queue_depth + 2) + 1
    assert sum(upscaler.backend.batches) <= in_flight, upscaler.backend.batches
    assert not [r for r in caplog.records if r.name == "concurrent.futures"], [r.getMessage() for r in caplog.records]
