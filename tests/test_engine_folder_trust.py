"""Nothing outside an engine folder is trusted (issue 10, items 2, 3 and 7's manifest part).

Tampered copies of a toy engine folder: paths that lead out (`..`, absolute, symlinks, external data),
swapped / truncated / edited files, and manifests of every wrong type. Each must be refused when the
folder is opened, with one line naming the field and the fix (ManifestError; exit 2 in invsr-run),
before any image is read, and without opening anything outside the folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
from onnx import external_data_helper, numpy_helper  # noqa: E402

from invsr_runtime import cli  # noqa: E402
from invsr_runtime.folder_guard import sha256_file  # noqa: E402
from invsr_runtime.manifest import ManifestError, load_manifest  # noqa: E402

from test_runtime_toyengine import build_toy_engine  # noqa: E402  (tests/ is on sys.path)

REBUILD = "invsr-export"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test verifies from scratch: its own cache root, and no digest remembered by this process."""
    monkeypatch.setenv("INVSR_TRT_CACHE", str(tmp_path / "cache"))
    import invsr_runtime.folder_guard as guard

    if hasattr(guard, "_verified_here"):
        monkeypatch.setattr(guard, "_verified_here", set())


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return build_toy_engine(tmp_path_factory.mktemp("trust") / "engine", tile=16, batch=2)


@pytest.fixture
def folder(pristine, tmp_path) -> Path:
    """A fresh copy of the toy folder, inside tmp_path/box (tmp_path itself is "outside")."""
    dst = tmp_path / "box" / "engine"
    shutil.copytree(pristine, dst)
    return dst


def edit(folder: Path, change: Callable[[dict], Any]) -> None:
    path = folder / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def reseal(folder: Path, component: str) -> None:
    """Record the current digest of a graph: the manifest was rewritten along with the graph."""
    edit(folder, lambda m: m["components"][component].update(sha256=sha256_file(folder / m["components"][component]["file"])))


def refused(folder: Path, *words: str) -> str:
    with pytest.raises(ManifestError) as info:
        load_manifest(folder)
    message = str(info.value)
    assert "\n" not in message and REBUILD in message, message
    for word in words:
        assert word in message, (word, message)
    return message


@contextlib.contextmanager
def opened_paths():
    """Every path this process opens meanwhile (Python's audit events for open and os.open)."""
    seen: list[str] = []
    _AUDIT["sink"] = seen
    try:
        yield seen
    finally:
        _AUDIT["sink"] = None


_AUDIT: dict[str, Any] = {"sink": None}


def _audit(event: str, args: tuple) -> None:
    sink = _AUDIT["sink"]
    if sink is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        sink.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _outside(paths: list[str], folder: Path) -> list[str]:
    """The opened paths under the test's tmp_path that are not inside `folder` (the cache root excepted)."""
    tmp = folder.parent.parent.resolve()
    inside = (str(folder.resolve()) + "/", str(tmp / "cache") + "/")
    return [p for p in paths if os.path.abspath(p).startswith(str(tmp) + "/")
            and not os.path.abspath(p).startswith(inside)]


def _photo(tmp_path: Path) -> Path:
    path = tmp_path / "a.png"
    Image.fromarray(np.full((12, 12, 3), 100, np.uint8)).save(path)
    return path


def run_cli(capsys, folder: Path, tmp_path: Path) -> tuple[int, list[str], Path]:
    out = tmp_path / "out"
    code = cli.run([str(folder), str(_photo(tmp_path)), "-o", str(out)])
    return code, capsys.readouterr().err.strip().splitlines(), out


# ------------------------------------------------------------------------------------ paths (item 2)
@pytest.mark.parametrize("field, name", [
    ("components.unet.file", "../secret.onnx"),
    ("components.unet.file", "sub/../../secret.onnx"),
    ("prompt_embeds", "../secret.npy"),
    ("prompt_embeds", "ABS/secret.npy"),
    ("components.vae_decoder.file", "ABS/secret.onnx"),
])
def test_manifest_names_outside_the_folder_are_refused_unopened(folder, tmp_path, field, name):
    """`..` and absolute names: refused, the outside file never opened, the message the same whether it exists."""
    name = name.replace("ABS", str(tmp_path))
    target = os.path.normpath(folder / name)
    shutil.copy(folder / ("unet.onnx" if name.endswith(".onnx") else "prompt_embeds.npy"), target)

    def point(m: dict) -> None:
        if field == "prompt_embeds":
            m["prompt_embeds"] = name
        else:
            m["components"][field.split(".")[1]]["file"] = name

    edit(folder, point)
    with opened_paths() as seen:
        present = refused(folder, field.split(".")[-1])
    assert not _outside(seen, folder)
    os.remove(target)
    assert refused(folder) == present  # no word about whether the outside file exists


def test_symlinks_out_are_refused_without_following_them(folder, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / "unet.onnx", outside / "unet.onnx")  # same bytes: the digest alone would pass
    (folder / "unet.onnx").unlink()
    (folder / "unet.onnx").symlink_to(outside / "unet.onnx")  # absolute target
    with opened_paths() as seen:
        refused(folder, "components.unet.file", "symlink", "outside")
    assert not _outside(seen, folder)
    (folder / "unet.onnx").unlink()
    (folder / "unet.onnx").symlink_to("../../outside/unet.onnx")  # relative target climbing out
    refused(folder, "components.unet.file", "outside")
    (folder / "unet.onnx").unlink()
    (folder / "hop").symlink_to(".")  # a chain that stays inside, then leaves through a directory link
    (folder / "sub").symlink_to(outside)
    (folder / "unet.onnx").symlink_to("hop/hop/sub/unet.onnx")
    refused(folder, "components.unet.file", "outside")
    os.remove(outside / "unet.onnx")
    assert "missing" not in refused(folder, "components.unet.file")  # dangling outside: same answer


def test_symlinks_inside_and_a_symlinked_folder_are_fine(folder, tmp_path):
    (folder / "weights").mkdir()
    os.replace(folder / "unet.onnx", folder / "weights" / "unet.onnx")
    (folder / "unet.onnx").symlink_to("weights/unet.onnx")
    os.replace(folder / "predictor.onnx", folder / "weights" / "predictor.onnx")
    (folder / "predictor.onnx").symlink_to(folder.resolve() / "weights" / "predictor.onnx")  # absolute, inside
    (folder / "loop").symlink_to("loop")  # present but never named: harmless
    link = tmp_path / "engine-link"
    link.symlink_to(folder)
    assert load_manifest(link).components["unet"].file == "unet.onnx"


@pytest.mark.parametrize("kind", ["fifo", "folder", "newline name", "dangling", "loop"])
def test_odd_files_inside_are_refused_without_blocking(folder, kind):
    """A FIFO would block an open, a folder is no graph, a newline would split the message, a loop never ends."""
    name = "un\net.onnx" if kind == "newline name" else "unet.onnx"
    (folder / "unet.onnx").unlink()
    if kind == "fifo":
        os.mkfifo(folder / name)
    elif kind == "folder":
        (folder / name).mkdir()
    elif kind == "dangling":
        (folder / name).symlink_to("nowhere.onnx")
    elif kind == "loop":
        (folder / name).symlink_to("unet.onnx")
    edit(folder, _set("components.unet.file", name))
    refused(folder, "components.unet.file")


def test_manifest_json_itself_may_not_lead_out(folder, tmp_path):
    real = tmp_path / "manifest.json"
    os.replace(folder / "manifest.json", real)
    (folder / "manifest.json").symlink_to(real)
    refused(folder, "manifest.json", "outside")


def test_path_refusal_is_exit_2_before_any_image(folder, tmp_path, capsys):
    edit(folder, lambda m: m.update(prompt_embeds="/etc/passwd"))
    code, err, out = run_cli(capsys, folder, tmp_path)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "prompt_embeds" in err[0]
    assert not out.exists()


def _externalize(folder: Path, component: str, location: str) -> Path:
    """Move the graph's initializers into one external-data file named `location` (relative to the graph)."""
    path = folder / f"{component}.onnx"
    model = onnx.load(str(path))
    external_data_helper.convert_model_to_external_data(model, all_tensors_to_one_file=True, location=location,
                                                        size_threshold=100)  # the conv weights, not shape inputs
    onnx.save_model(model, str(path))
    return path


def test_external_data_is_confined_recorded_and_verified(folder, tmp_path):
    from invsr_runtime.upscaler import Upscaler

    ref = Upscaler(folder).upscale(np.full((12, 12, 3), 0.4, np.float32), seed=3)
    _externalize(folder, "vae_encoder", "vae_encoder.onnx.data")
    reseal(folder, "vae_encoder")
    refused(folder, "components.vae_encoder", "vae_encoder.onnx.data", "sha256")  # named by the graph, not recorded
    edit(folder, lambda m: m["components"]["vae_encoder"].update(external_data={"vae_encoder.onnx.data": "0" * 64}))
    refused(folder, "components.vae_encoder.external_data", "does not match")
    digest = sha256_file(folder / "vae_encoder.onnx.data")
    edit(folder, lambda m: m["components"]["vae_encoder"].update(external_data={"vae_encoder.onnx.data": digest}))
    np.testing.assert_array_equal(Upscaler(folder).upscale(np.full((12, 12, 3), 0.4, np.float32), seed=3), ref)
    with open(folder / "vae_encoder.onnx.data", "r+b") as fh:  # a weight edited in place
        fh.seek(0)
        fh.write(b"\x7f")
    refused(folder, "components.vae_encoder.external_data", "does not match")


@pytest.mark.parametrize("location", ["../outside.data", "ABS/outside.data", "link.data"])
def test_external_data_pointing_out_is_refused_before_onnxruntime_reads_it(folder, tmp_path, location):
    """A graph (with its digest rewritten too) whose weights live outside: refused, the file never opened."""
    outside = tmp_path / "box" / "outside.data"
    location = location.replace("ABS", str(tmp_path / "box"))
    path = _externalize(folder, "vae_encoder", "vae_encoder.onnx.data")
    os.replace(folder / "vae_encoder.onnx.data", outside)
    if location == "link.data":
        (folder / "link.data").symlink_to(outside)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in external_data_helper._get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(path))
    reseal(folder, "vae_encoder")
    edit(folder, lambda m: m["components"]["vae_encoder"].update(external_data={location: sha256_file(outside)}))
    with opened_paths() as seen:
        refused(folder, "components.vae_encoder")
    assert not _outside(seen, folder)


# -------------------------------------------------------------------------------- integrity (item 3)
def _swap_weights(folder: Path, component: str) -> None:
    """Same graph, same inputs and outputs, other weights."""
    path = folder / f"{component}.onnx"
    model = onnx.load(str(path))
    init = model.graph.initializer[0]
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    onnx.save(model, str(path))


def test_swapped_weights_are_refused_with_the_rebuild_command(folder, tmp_path, capsys):
    _swap_weights(folder, "vae_decoder")
    refused(folder, "components.vae_decoder.file", "sha256", "vae_decoder.onnx")
    code, err, out = run_cli(capsys, folder, tmp_path)
    assert code == 2 and len(err) == 1 and "sha256" in err[0] and "invsr-export --out" in err[0]
    assert not out.exists()


def test_truncated_graph_and_edited_embedding_are_refused(folder):
    data = (folder / "predictor.onnx").read_bytes()
    (folder / "predictor.onnx").write_bytes(data[: len(data) // 2])
    refused(folder, "components.predictor.file", "does not match")
    (folder / "predictor.onnx").write_bytes(data)
    embeds = np.load(folder / "prompt_embeds.npy")
    np.save(folder / "prompt_embeds.npy", embeds + 1e-3)
    refused(folder, "prompt_embeds", "does not match")


def test_missing_digests_are_refused(folder):
    edit(folder, lambda m: m["components"]["unet"].pop("sha256"))
    refused(folder, "components.unet.sha256", "missing")
    edit(folder, lambda m: m.pop("prompt_embeds_sha256"))
    refused(folder, "prompt_embeds_sha256", "missing")


def test_verified_digests_are_cached_until_the_file_changes(folder, monkeypatch):
    import invsr_runtime.folder_guard as guard

    hashed: list[int] = []
    real = guard._sha256_stream
    monkeypatch.setattr(guard, "_sha256_stream", lambda fh, *a: hashed.append(os.fstat(fh.fileno()).st_ino) or real(fh, *a))
    load_manifest(folder)
    assert len(hashed) == 5  # four graphs + the prompt embedding
    monkeypatch.setattr(guard, "_verified_here", set())  # a new process: only the on-disk cache is left
    hashed.clear()
    load_manifest(folder)
    assert hashed == []
    graph = folder / "unet.onnx"
    before = graph.stat()
    data = bytearray(graph.read_bytes())
    data[-1] ^= 1  # same size, and the mtime put back: the kernel-set ctime still changes
    graph.write_bytes(bytes(data))
    os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))
    refused(folder, "components.unet.file", "does not match")
    assert hashed == [graph.stat().st_ino]  # only the changed file hashed again


# ------------------------------------------------------------------------- manifest schema (item 7)
def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Set a dotted path (list indices as numbers) in the manifest; the `DELETE` value removes it."""
    def change(m: dict) -> None:
        keys = [int(k) if k.isdigit() and not isinstance(m, dict) else k for k in path.split(".")]
        node = m
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        last = int(keys[-1]) if isinstance(node, list) else keys[-1]
        if value == "DELETE":
            del node[last]
        else:
            node[last] = value
    return change


JUNK = {
    # case: (change, field the message must name)
    "components list": (_set("components", []), "components"),
    "components missing unet": (lambda m: m["components"].pop("unet"), "components"),
    "components extra": (lambda m: m["components"].update(text_encoder=m["components"]["unet"]), "components"),
    "file null": (_set("components.unet.file", None), "components.unet.file"),
    "file number": (_set("components.predictor.file", 7), "components.predictor.file"),
    "file wrong kind": (_set("components.unet.file", "unet.plan"), "components.unet.file"),
    "inputs string": (_set("components.unet.inputs", "latent"), "components.unet.inputs"),
    "input renamed": (_set("components.unet.inputs.0.name", "x"), "components.unet.inputs"),
    "shape strings": (_set("components.unet.inputs.0.shape", ["2", "4"]), "components.unet.inputs[0].shape[0]"),
    "shape mismatch": (_set("components.vae_decoder.outputs.0.shape", [2, 3, 32, 32]), "components.vae_decoder.outputs[0].shape"),
    "dtype unknown": (_set("components.unet.inputs.0.dtype", "complex128"), "components.unet.inputs[0].dtype"),
    "tensor not object": (_set("components.unet.outputs.0", "latent_next"), "components.unet.outputs[0]"),
    "sha256 number": (_set("components.unet.sha256", 12), "components.unet.sha256"),
    "external_data list": (_set("components.unet.external_data", ["x"]), "components.unet.external_data"),
    "alphas zeros": (lambda m: m.update(alphas_cumprod=[0.0] * 1000), "alphas_cumprod[0]"),
    "alphas strings": (lambda m: m.update(alphas_cumprod=["0.5"] * 1000), "alphas_cumprod[0]"),
    "alphas null": (_set("alphas_cumprod", None), "alphas_cumprod"),
    "alphas short": (lambda m: m.update(alphas_cumprod=m["alphas_cumprod"][:999]), "alphas_cumprod"),
    "alphas rising": (lambda m: m.update(alphas_cumprod=m["alphas_cumprod"][::-1]), "alphas_cumprod[1]"),
    "alphas one": (_set("alphas_cumprod.0", 1.0), "alphas_cumprod[0]"),
    "timesteps list": (_set("default_timesteps", [[200]]), "default_timesteps"),
    "timesteps rising": (_set("default_timesteps.2", [100, 200]), "default_timesteps.2"),
    "timesteps key": (_set("default_timesteps.9", [1]), "default_timesteps.9"),
    "timesteps strings": (_set("default_timesteps.1", ["a"]), "default_timesteps.1[0]"),
    "timesteps count": (_set("default_timesteps.3", [200]), "default_timesteps.3"),
    "tile zero": (_set("tile", 0), "tile"),
    "tile 17": (_set("tile", 17), "tile"),
    "tile string": (_set("tile", "16"), "tile"),
    "tile bool": (_set("tile", True), "tile"),
    "tile vs graphs": (_set("tile", 32), "components.vae_encoder.inputs[0].shape"),
    "batch zero": (_set("batch", 0), "batch"),
    "batch float": (_set("batch", 2.0), "batch"),
    "batch vs graphs": (_set("batch", 3), "components.vae_encoder.inputs[0].shape"),
    "scale 2": (_set("scale", 2), "scale"),
    "scale string": (_set("scale", "4"), "scale"),
    "latent channels": (_set("latent_channels", 8), "latent_channels"),
    "scaling factor": (_set("scaling_factor", -1), "scaling_factor"),
    "precision": (_set("precision", "fp64"), "precision"),
    "backend": (_set("backend", "openvino"), "backend"),
    "format string": (_set("format_version", "1"), "format_version"),
    "format null": (_set("format_version", None), "format_version"),
    "format missing": (_set("format_version", "DELETE"), "format_version"),
    "prompt_embeds number": (_set("prompt_embeds", 5), "prompt_embeds"),
    "prompt_embeds strings": (_set("prompt_embeds", ["a"]), "prompt_embeds"),
    "provenance list": (_set("provenance", []), "provenance"),
}


@pytest.mark.parametrize("case", sorted(JUNK))
def test_junk_manifest_is_one_line_naming_the_field(folder, case):
    change, field = JUNK[case]
    edit(folder, change)
    refused(folder, f"`{field}")


@pytest.mark.parametrize("text, words", [
    ("[]", "JSON object"), ("null", "JSON object"), ('"engine"', "JSON object"), ("1", "JSON object"),
    ('{"format_version": 1, "tile": NaN}', "NaN"), ("[" * 100_000, "unreadable"), ("\xff\xfe", "unreadable"),
    ('{"format_version": 1}', "`backend`"),
])
def test_manifest_that_is_not_a_manifest(folder, text, words):
    (folder / "manifest.json").write_bytes(text.encode("latin-1"))
    refused(folder, words)


def test_huge_manifest_is_refused_unread(folder):
    with open(folder / "manifest.json", "ab") as fh:
        fh.write(b" " * (17 << 20))
    refused(folder, "larger than")


@pytest.mark.parametrize("array", [
    np.array([["a"] * 8] * 77)[None],                         # strings
    np.full((1, 77, 8), np.nan, np.float32),                  # not finite
    np.zeros((1, 76, 8), np.float32),                         # wrong shape
    np.zeros((1, 77, 9), np.float32),                         # another width than the UNet's
    np.array([{"x": 1}], dtype=object),                       # a pickle
], ids=["strings", "nan", "shape", "width", "pickle"])
def test_unusable_prompt_embedding_is_refused(folder, array):
    np.save(folder / "prompt_embeds.npy", array, allow_pickle=True)
    edit(folder, lambda m: m.update(prompt_embeds_sha256=sha256_file(folder / "prompt_embeds.npy")))
    refused(folder, "prompt_embeds")


def test_junk_manifest_in_invsr_run_is_exit_2_before_any_image(folder, tmp_path, capsys):
    edit(folder, _set("alphas_cumprod", [0] * 1000))
    code, err, out = run_cli(capsys, folder, tmp_path)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and "alphas_cumprod" in err[0]
    assert not out.exists()


def test_export_records_the_digest_of_every_file_it_writes(folder):
    """invsr-export's manifest entries: graph sha256 plus one digest per external-data file the graph names."""
    from types import SimpleNamespace

    from invsr_export.engine_folder import component_spec
    from invsr_runtime.manifest import TensorSpec

    _externalize(folder, "vae_encoder", "vae_encoder.onnx.data")
    io = SimpleNamespace(inputs=[TensorSpec("lr", [2, 3, 16, 16])], outputs=[TensorSpec("latent_lr", [2, 4, 8, 8])])
    spec = component_spec(folder, "vae_encoder.onnx", io)
    assert spec.sha256 == sha256_file(folder / "vae_encoder.onnx")
    assert spec.external_data == {"vae_encoder.onnx.data": sha256_file(folder / "vae_encoder.onnx.data")}
    edit(folder, lambda m: m["components"]["vae_encoder"].update(sha256=spec.sha256, external_data=spec.external_data))
    assert load_manifest(folder).components["vae_encoder"].external_data == spec.external_data
    assert component_spec(folder, "unet.onnx", io).external_data == {}
