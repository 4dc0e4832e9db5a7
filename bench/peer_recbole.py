"""RecBole's NeuMF under flixrec's evaluation protocol, beside flixrec's NeuMF, on the same seeds.

    python3 -m venv .venv-recbole
    .venv-recbole/bin/pip install torch==2.13.0 recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14"
    python bench/peer_recbole.py --recbole-python .venv-recbole/bin/python    # ML-100K, seeds 1-3

The models issue calibrates its NeuMF bar on RecBole 1.2.1's NeuMF "when both see the same
held-out items". This script makes that comparison exact. For each seed, flixrec prepares
MovieLens-100K as `experiment=neumf_ml100k` does (leave-one-out by time with the seeded tie
rule, 1 + 100 distinct unseen candidates per user) and hands RecBole its training ratings and
each user's validation and test movie as atomic files (`benchmark_filename`), so RecBole trains
on exactly flixrec's training ratings. RecBole then trains its NeuMF with all of its own
defaults (MF and MLP embeddings of 64, MLP [128, 64] with dropout 0.1, one uniform negative,
batch 2048, Adam lr 0.001, early stopping after 10 epochs without a better validation MRR@10
on its own 1 + 100 candidates, drawn with replacement) and reloads its best checkpoint. That
checkpoint scores flixrec's validation and test candidates, ranked with flixrec's metrics (ties
against the held-out movie); RecBole's own test figures are reported beside them. flixrec's
NeuMF, tuned (`experiment=neumf_ml100k`) and with NCF defaults (batch 256), trains on the same
seeds in the same run, so every row comes from one machine.

RecBole runs in its own interpreter (`--recbole-python`): 1.2.1 needs numpy < 2 and an older
pandas, which flixrec's environment does not have. It is not a dependency of flixrec; nothing
in the tests needs it. Prints one JSON object, then a markdown table; `--out FILE` also writes
the JSON. Work files live in bench/_work/peer_recbole and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # not imported at run time: RecBole's interpreter has no omegaconf
    from numpy.typing import ArrayLike
    from omegaconf import DictConfig

BENCH = Path(__file__).resolve().parent
PEER_WORK = BENCH / "_work" / "peer_recbole"
# What RecBole must be told to read flixrec's split from files and to evaluate each user on
# 1 + 100 sampled candidates; the model, its training and its validation metric (MRR@10) stay at
# RecBole 1.2.1's defaults
RECBOLE_CONFIG = {"load_col": {"inter": ["user_id", "item_id"]},
                  "benchmark_filename": ["train", "valid", "test"],
                  "eval_args": {"group_by": "user", "order": "RO", "mode": "uni100"},
                  "metrics": ["Hit", "NDCG", "MRR"], "topk": [10], "valid_metric": "MRR@10",
                  "use_gpu": False, "reproducibility": True, "show_progress": False, "state": "WARNING"}


def export(cfg: DictConfig, out: Path) -> str:
    """Write the split and candidates of composed train config `cfg` under `out`: RecBole atomic
    files out/NAME/NAME.{train,valid,test}.inter (flixrec's dense ids as tokens; train holds
    the training ratings, valid and test each evaluated user's held-out movie) and
    out/candidates.npz (users (U,), val and test (U, 1 + data.num_test_negatives) int64, column 0
    the held-out movie).
    Returns NAME, the RecBole data set name."""
    import numpy as np

    import flixrec  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
    from flixrec.run import build

    dm, _ = build(cfg)
    dm.setup("fit")
    name = f"flixrec_s{cfg.seed}"
    (out / name).mkdir(parents=True, exist_ok=True)
    users = dm.eval_users.numpy()
    for part, (u, i) in {"train": (dm.train_users.numpy(), dm.train_items.numpy()),
                         "valid": (users, dm.val_items[:, 0].numpy()),
                         "test": (users, dm.test_items[:, 0].numpy())}.items():
        np.savetxt(out / name / f"{name}.{part}.inter", np.stack([u, i], 1), fmt="%d", delimiter="\t",
                   header="user_id:token\titem_id:token", comments="")
    np.savez(out / "candidates.npz", users=users, val=dm.val_items.numpy(), test=dm.test_items.numpy())
    return name


def recbole_child(args: dict) -> dict:
    """Runs under RecBole's interpreter: train RecBole's NeuMF on the exported files, reload its
    best checkpoint, and save its scores of flixrec's candidates to out/scores.npz (float32
    (U, C) each for val and test, shaped like the candidate matrices). Returns RecBole's own validation and test figures."""
    import numpy as np
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import NeuMF
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    out = Path(args["out"])
    torch.set_num_threads(args["threads"])
    # RecBole 1.2.1 reloads its own checkpoint (which holds its config object) with torch.load's
    # default, restricted to plain weights since torch 2.6; the file is the one it just wrote
    load = torch.load
    torch.load = lambda *a, **k: load(*a, **{"weights_only": False, **k})
    config = Config(model="NeuMF", dataset=args["name"], config_dict={
        **RECBOLE_CONFIG, **args.get("config", {}), "data_path": str(out), "seed": args["seed"],
        "checkpoint_dir": str(out / "saved")})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = NeuMF(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    _, valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    model.eval()
    cands = np.load(out / "candidates.npz")
    users = torch.as_tensor(dataset.token2id("user_id", [str(u) for u in cands["users"]]))
    scores = {}
    for part in ("val", "test"):
        items = torch.as_tensor(dataset.token2id("item_id", [str(i) for i in cands[part].reshape(-1)]))
        items = items.view(cands[part].shape)
        with torch.no_grad():
            logits = model(users[:, None].expand_as(items).reshape(-1), items.reshape(-1))
        scores[part] = logits.view(items.shape).float().numpy()
    np.savez(out / "scores.npz", **scores)
    return {"recbole_valid": {k: float(v) for k, v in valid.items()},
            "recbole_test": {k: float(v) for k, v in test.items()},
            "epochs_trained": len(trainer.train_loss_dict)}


def flixrec_metrics(scores: ArrayLike) -> dict:
    """HR@10, NDCG@10 and MRR of a (U, C) score array, column 0 the held-out movie, with
    flixrec's metrics (ties count against it)."""
    import torch

    from flixrec.metrics import RankingMetrics

    m = RankingMetrics((10,))
    m.update(torch.as_tensor(scores))
    return {k: round(float(v), 4) for k, v in m.compute().items()}


FLIXREC_ROWS = {"flixrec neumf, tuned (experiment=neumf_ml100k)": ["experiment=neumf_ml100k"],
                "flixrec neumf, NCF defaults (batch 256)": ["data=ml-100k", "model=neumf",
                                                             "data.batch_size=256"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recbole-python", help="interpreter with recbole 1.2.1 installed (see above)")
    ap.add_argument("--root", type=Path, default=None, help="ML-100K folder (default: run_all.py's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=2, help="RecBole's torch threads")
    ap.add_argument("--recbole-config", default="{}", help="JSON overrides of RecBole's config")
    ap.add_argument("--no-flixrec", action="store_true", help="skip training flixrec's rows")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:  # under RecBole's interpreter: nothing of flixrec is imported
        print(json.dumps(recbole_child(json.loads(a.child))), flush=True)
        return
    if not a.recbole_python:
        ap.error("--recbole-python is required (an interpreter with recbole 1.2.1; see the docstring)")
    sys.path.insert(0, str(BENCH))
    import numpy as np
    from run_all import ML100K, WORK, compose_cfg, last_json, log, run, train_cli

    root = (a.root or ML100K).resolve()  # train.py runs from the repository root
    WORK.mkdir(parents=True, exist_ok=True)  # run() keeps its children's output there
    shutil.rmtree(PEER_WORK, ignore_errors=True)
    PEER_WORK.mkdir(parents=True)
    rows: dict[str, list[dict]] = {}
    try:
        for seed in a.seeds:
            out = PEER_WORK / f"seed{seed}"
            name = export(compose_cfg(["experiment=neumf_ml100k", f"data.root={root}", f"seed={seed}",
                                      "logger=none"], out / "cfg"), out)
            log(f"seed {seed}: RecBole 1.2.1 NeuMF on flixrec's split")
            # absolute, not resolved: a venv's python is a link to the base interpreter
            res = run([os.path.abspath(a.recbole_python), Path(__file__).resolve(), "--child", json.dumps(
                {"out": str(out), "name": name, "seed": seed, "threads": a.threads,
                 "config": json.loads(a.recbole_config)})], timeout=7200, cwd=out)  # its logs land there
            got = last_json(res["stdout"])
            if res["rc"] != 0 or got is None:
                raise SystemExit(f"RecBole run for seed {seed} failed (exit {res['rc']}):\n{res['stderr'][-3000:]}")
            scores = np.load(out / "scores.npz")
            rows.setdefault("recbole neumf (1.2.1 defaults)", []).append(
                {"seed": seed, "val": flixrec_metrics(scores["val"]), "test": flixrec_metrics(scores["test"]),
                 **got, "train_s": res["wall_s"]})
            for label, overrides in ({} if a.no_flixrec else FLIXREC_ROWS).items():
                log(f"seed {seed}: {label}")
                r = train_cli([*overrides, f"data.root={root}", f"seed={seed}", "logger=none"],
                              out / "flixrec_run")
                m = r.get("metrics")
                if r["rc"] != 0 or not m:
                    raise SystemExit(f"flixrec run {overrides} seed {seed} failed (exit {r['rc']})")
                rows.setdefault(label, []).append(
                    {"seed": seed, "best_epoch": m["best_epoch"], "train_s": m["train_seconds"],
                     **{part: {k: round(m[part][k], 4) for k in ("hr@10", "ndcg@10", "mrr")}
                        for part in ("val", "test")}})
    finally:
        shutil.rmtree(PEER_WORK, ignore_errors=True)
    result = {"seeds": a.seeds, "recbole_config": {**RECBOLE_CONFIG, **json.loads(a.recbole_config)},
              "rows": rows}
    text = json.dumps(result, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)

    def mean_sd(runs: list[dict], part: str, key: str) -> str:
        xs = [r[part][key] for r in runs if part in r and key in r[part]]
        if not xs:
            return ""
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

    print("\n| model | val HR@10 | val NDCG@10 | test HR@10 | test NDCG@10 | RecBole's own test HR@10 / NDCG@10 (its candidates, drawn with replacement) |")
    print("|---|---|---|---|---|---|")
    for label, runs in rows.items():
        own = (f"{mean_sd(runs, 'recbole_test', 'hit@10')} / {mean_sd(runs, 'recbole_test', 'ndcg@10')}"
               if "recbole_test" in runs[0] else "")
        print(f"| {label} | {mean_sd(runs, 'val', 'hr@10')} | {mean_sd(runs, 'val', 'ndcg@10')} | "
              f"{mean_sd(runs, 'test', 'hr@10')} | {mean_sd(runs, 'test', 'ndcg@10')} | {own} |")


if __name__ == "__main__":
    main()
