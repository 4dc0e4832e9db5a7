"""Benchmark scripts that cannot run in full here still run their own parts: the GPU benchmark in its
reduced CPU mode, the RecBole peer comparison up to RecBole itself (the export and the scoring).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

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


def _peer_recbole():
    """bench/peer_recbole.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("peer_recbole", ROOT / "bench" / "peer_recbole.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recbole_peer_export_is_flixrecs_split(make_cfg, tmp_path):
    """The files RecBole trains and validates on are exactly flixrec's split, and the candidates
    it is scored on are flixrec's (RecBole itself is not needed for this part)."""
    from flixrec.run import build

    cfg = make_cfg(["seed=3"])
    out = tmp_path / "peer"
    name = _peer_recbole().export(cfg, out)
    parts = {}
    for part in ("train", "valid", "test"):
        path = out / name / f"{name}.{part}.inter"
        assert path.read_text().splitlines()[0] == "user_id:token\titem_id:token"
        parts[part] = np.loadtxt(path, skiprows=1, dtype=np.int64, ndmin=2)
    cands = np.load(out / "candidates.npz")
    users = cands["users"]
    assert cands["val"].shape == cands["test"].shape == (len(users), 1 + cfg.data.num_test_negatives)
    np.testing.assert_array_equal(parts["valid"], np.stack([users, cands["val"][:, 0]], 1))
    np.testing.assert_array_equal(parts["test"], np.stack([users, cands["test"][:, 0]], 1))

    dm, _ = build(cfg)
    dm.setup("fit")
    n = dm.num_items
    exported = np.sort(np.concatenate([p[:, 0] * n + p[:, 1] for p in parts.values()]))
    rated = np.sort(dm.table.users.astype(np.int64) * n + dm.table.items.astype(np.int64))
    np.testing.assert_array_equal(exported, rated)  # every rating once: train, validation or test
    np.testing.assert_array_equal(users, dm.eval_users.numpy())
    np.testing.assert_array_equal(cands["val"], dm.val_items.numpy())
    np.testing.assert_array_equal(cands["test"], dm.test_items.numpy())


def test_recbole_peer_scores_with_flixrecs_tie_rule():
    # row 0: the held-out movie scores highest (rank 0); row 1: it ties one candidate, which
    # counts against it (rank 1): NDCG@10 (1 + 1/log2(3)) / 2, MRR (1 + 1/2) / 2
    m = _peer_recbole().flixrec_metrics([[3.0, 1.0, 2.0], [1.0, 1.0, 0.0]])
    assert m["hr@10"] == 1.0
    assert abs(m["ndcg@10"] - round((1 + 1 / np.log2(3)) / 2, 4)) < 1e-9
    assert m["mrr"] == 0.75
