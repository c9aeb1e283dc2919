"""benchmarks/gpu/session.sh, the prepared GPU session, in its dry mode (synthetic:tiny, CPU, fp32): the same
two invsr-bench steps as on the H200, so the script cannot rot between GPU sessions."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_session_script_dry_mode(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
               INVSR_TRT_CACHE=str(tmp_path / "cache"), TMPDIR=str(tmp_path))
    res = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/session.sh"), "--dry", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=1500, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    tiles = json.loads((tmp_path / "out/tiles/report.json").read_text())
    ok = {(c["backend"], c["precision"]) for c in tiles["configs"] if c.get("status") == "ok"}
    assert ok == {("torch-eager", "fp32"), ("torch-fast", "fp32")}
    image = json.loads((tmp_path / "out/image/report.json").read_text())
    (row,) = image["rows"]
    assert row["device"].startswith("torch-fast") and 0.5 < row["efficiency"] <= 1.0 and row["tiles"] == 6
    assert (tmp_path / "out/image/efficiency.png").is_file() and "| torch-fast" in (tmp_path / "out/image/report.md").read_text()
