"""The GPU benchmark script runs in its reduced CPU mode, so it cannot rot between GPU sessions."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_cpu_smoke(tmp_path):
    report = tmp_path / "GPU_RESULTS.md"
    proc = subprocess.run([sys.executable, "bench/gpu.py", "--cpu-smoke", "--out", str(report)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["smoke"] is True
    assert {"machine", "data", "model", "train", "eval", "total_seconds"} <= res.keys()
    assert res["data"]["ratings"] > 0 and res["data"]["eval_users"] > 0
    variants = {row["variant"] for row in res["train"]}
    assert {"fp32", "bf16-mixed"} <= variants
    for row in res["train"]:
        assert "error" not in row, row
        assert row["steps"] > 0 and row["epoch_samples_per_s"] > 0 and row["steady_samples_per_s"] > 0
    for kind in ("sampled", "full"):
        assert res["eval"][kind]["users"] == res["data"]["eval_users"]
        assert res["eval"][kind]["users_per_s"] > 0
        assert 0.0 <= res["eval"][kind]["hr@10"] <= 1.0
    assert "## Training" in report.read_text()
    assert json.loads(report.with_suffix(".json").read_text())["train"]
