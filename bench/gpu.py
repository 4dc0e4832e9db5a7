"""GPU benchmark: NeuMF at NVIDIA's reference size on full-size synthetic Netflix data.

    python bench/gpu.py                 # on a CUDA machine: 100M ratings, ~5 min
    python bench/gpu.py --cpu-smoke     # reduced sizes on the CPU, seconds (CI; also without CUDA)

On the lent H200 (its image has torch and Lightning but not Hydra): build the wheels here once,
`pip wheel --no-deps -w .whl hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3`
(.whl/ is git-ignored), then one device call, carry [".whl"], timeout_s 540:

    python3 -m pip install -q --no-index --no-deps .whl/*.whl && PYTHONPATH=src \
    PYTHONUNBUFFERED=1 python3 bench/gpu.py --out $OUT/GPU_RESULTS.md 2>&1 | tee $OUT/gpu.log

and copy $OUT/GPU_RESULTS.md to bench/. The report and a JSON twin (`--out` with .json) are
rewritten after every measurement, so a run cut short still returns what it measured.

What it measures (one JSON object on stdout; bench/GPU_RESULTS.md, or --out):

- data: 480,189 users x 17,770 movies x ~209 ratings per user (100M), drawn in memory by
  `flixrec.data.synthetic.simulate` (the generator behind `data=synthetic`; writing and
  re-parsing 2 GB of text would only spend device time on the CPU side, which
  `bench/run_all.py` measures), then split, candidates and the sampling index built by
  `RatingsDataModule.setup`, exactly as for files.
- training: `trainer.fit` through `flixrec.run.build`/`build_trainer` for one full epoch per
  variant (fp32; fp32 with TF32 matmuls; bf16-mixed; bf16-mixed with fused Adam; optionally
  `torch.compile`), NeuMF with factor 64 and MLP layers [256, 256, 128, 64], batches of
  209,715 positives = 2^20 samples with 4 negatives each. The training pairs stay on the
  GPU for the whole run (`TrainBatches(device=...)`): the permutation, the batch gathers and the
  negatives are made there, with no host round trip per batch. Reported: the
  epoch's wall time and steady-state samples/s (steps after the first 10).
- evaluation: full ranking of every evaluated user (~480k) against all 17,770 movies on the
  GPU (`flixrec.models.module.full_ranks`, score matrices of `--rank-cells` cells), and the
  sampled 1 + 100 evaluation.

Targets (issue 6): >= 50M training samples/s on one H200 and a full epoch (~500M samples)
in under 20 s. The figures are whatever was measured, shortfalls included.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

import flixrec  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch is imported)
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import WORK, compose_cfg  # noqa: E402

import flixrec.data.datamodule as datamodule  # noqa: E402
from flixrec.data import synthetic  # noqa: E402
from flixrec.data.ratings import Ratings  # noqa: E402
from flixrec.metrics import RankingMetrics  # noqa: E402
from flixrec.models.module import full_ranks, score_candidates  # noqa: E402
from flixrec.run import build, build_trainer  # noqa: E402

FULL = {"num_users": 480_189, "num_items": 17_770, "mean_ratings_per_user": 209.25,
        "gmf_dim": 64, "mlp_layers": [256, 256, 128, 64], "batch_size": 209_715,
        "eval_batch_size": 8192, "rank_cells": 1 << 24}
SMOKE = {"num_users": 2_000, "num_items": 400, "mean_ratings_per_user": 30.0,
         "gmf_dim": 8, "mlp_layers": [32, 16, 8], "batch_size": 2_048,
         "eval_batch_size": 512, "rank_cells": 1 << 18}
VARIANTS = {  # name: (trainer.precision, TF32 matmuls, fused Adam)
    "fp32": ("32-true", False, False),
    "fp32_tf32": ("32-true", True, False),
    "bf16-mixed": ("bf16-mixed", False, False),
    "bf16-mixed_fused_adam": ("bf16-mixed", False, True),
}


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def simulated_table(sizes: dict) -> tuple[Ratings, float]:
    """The synthetic data as a `Ratings` table, generated in memory on every core."""
    t = time.perf_counter()
    # chunks are independent streams: more threads change nothing but the time
    synthetic._WORKERS = max(2, os.cpu_count() or 2)
    sim = synthetic.simulate(num_users=sizes["num_users"], num_items=sizes["num_items"],
                             mean_ratings_per_user=sizes["mean_ratings_per_user"], seed=0)
    epoch_day = int((synthetic.FIRST_DAY - np.datetime64("1970-01-01", "D")).astype(int))
    table = Ratings(users=sim.users, items=sim.items, ratings=sim.stars,
                    times=sim.days.astype(np.int32) + epoch_day, user_ids=sim.customer_ids,
                    item_ids=sim.movie_ids)
    return table, time.perf_counter() - t


class StepTimer(pl.Callback):
    """Samples/s over the steps after `warmup`, CUDA-synchronised at both ends."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.samples, self.t0, self.steps = warmup, 0, None, 0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = self._now()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None:
            self.samples += batch["items"].numel()
            self.steps += 1

    def on_train_epoch_end(self, trainer, module) -> None:
        self.seconds = self._now() - self.t0 if self.t0 is not None else None


def device_batches(dm, device: torch.device):
    """The datamodule's training batches, with the training pairs kept on `device`."""
    rank, world = dm._rank_world()
    return datamodule.TrainBatches(dm.train_users, dm.train_items, dm.batch_size, dm.seed, dm._epoch,
                                   rank, world, device=device)


def train_variant(cfg, dm, name: str, compile_net: bool, max_steps: int | None) -> dict:
    precision, tf32, fused = VARIANTS[name]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    with open_dict(cfg):
        cfg.trainer.precision = precision
        cfg.model.optimizer.fused = True if fused else None  # None: torch's default
        cfg.trainer.update(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0,
                           enable_checkpointing=False, max_steps=max_steps or -1)
        cfg.callbacks = None
        cfg.model.compile = compile_net  # torch.compile of the training forward
    torch.manual_seed(0)
    from hydra.utils import instantiate

    model = instantiate(cfg.model, net={"num_users": dm.num_users, "num_items": dm.num_items})
    timer = StepTimer(warmup=min(10, max(1, len(dm.train_dataloader()) // 4)))
    trainer = build_trainer(cfg)
    trainer.callbacks.append(timer)
    device = trainer.strategy.root_device
    dm.train_dataloader = lambda: device_batches(dm, device)  # until the datamodule offers it
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    wall = time.perf_counter() - t
    del dm.train_dataloader
    out = {"variant": name, "precision": precision, "tf32": tf32, "fused_adam": fused,
           "compiled": compile_net, "steps": trainer.global_step,
           "samples_per_step": int(dm.batch_size * (1 + dm.num_negatives)),
           "epoch_samples": model.train_samples, "epoch_seconds": round(model.train_seconds, 3),
           "fit_wall_seconds": round(wall, 3),
           "epoch_samples_per_s": round(model.train_samples / max(model.train_seconds, 1e-9)),
           "steady_samples_per_s": round(timer.samples / timer.seconds) if timer.seconds else None}
    if torch.cuda.is_available():
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    model.cpu()
    return out, model


def evaluate(model, dm, device: torch.device, rank_cells: int, precision: str, max_users: int | None) -> dict:
    """Users/s of full ranking over all items and of sampled 1 + n evaluation, on `device`."""
    net = model.net.to(device).eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.startswith("bf16"))
    out = {}
    with torch.no_grad(), autocast:
        for kind in ("sampled", "full"):
            loader = dm.val_dataloader() if kind == "sampled" else dm.test_dataloader()
            metric = RankingMetrics((10,)).to(device)
            users = 0
            torch.cuda.synchronize() if device.type == "cuda" else None
            t = time.perf_counter()
            for batch in loader:
                b = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                if kind == "sampled":
                    metric.update(score_candidates(net, b["users"], b["items"]))
                else:
                    metric.update(ranks=full_ranks(net, b["users"], b["items"][:, 0], b["seen_rows"],
                                                   b["seen_items"], b["num_items"], rank_cells))
                users += len(b["users"])
                if max_users and users >= max_users:
                    break
            values = metric.compute()
            torch.cuda.synchronize() if device.type == "cuda" else None
            seconds = time.perf_counter() - t
            out[kind] = {"users": users, "seconds": round(seconds, 3), "users_per_s": round(users / seconds),
                         "hr@10": round(float(values["hr@10"]), 4)}
    out["precision"] = precision
    out["rank_cells"] = rank_cells
    return out


def write_markdown(res: dict, path: Path) -> None:
    m = res["machine"]
    L = ["# flixrec GPU benchmark", "",
         f"Command: `{res['command']}`" + (" (CPU smoke mode: reduced sizes, not a benchmark)" if res["smoke"] else ""),
         "", f"- Device: {m['device']}; host {m['cpu_count']} CPU cores; {m['platform']}",
         f"- Versions: Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}), Lightning {m['lightning']}",
         f"- Date: {m['date']}", "",
         f"Data: {res['data']['ratings']:,} synthetic ratings, {res['data']['users']:,} users x "
         f"{res['data']['items']:,} movies (generated in {res['data']['generate_seconds']:.1f} s, prepared by "
         f"`RatingsDataModule.setup` in {res['data']['setup_seconds']:.1f} s); model NeuMF factor "
         f"{res['model']['gmf_dim']}, MLP {res['model']['mlp_layers']}, batch {res['model']['batch_size']:,} "
         f"positives x (1 + 4) = {res['model']['batch_size'] * 5:,} samples.", "",
         "## Training, one full epoch per variant", "",
         "| variant | epoch (s) | epoch samples/s | steady samples/s | steps | peak GPU mem (GB) |",
         "|---|---:|---:|---:|---:|---:|"]
    for r in res["train"]:
        if "error" in r:
            L.append(f"| {r['variant']} | failed: {r['error'][:120]} | | | | |")
            continue
        L.append(f"| {r['variant']}{' (compiled)' if r['compiled'] else ''} | {r['epoch_seconds']:.2f} | "
                 f"{r['epoch_samples_per_s']:,} | {r['steady_samples_per_s'] or 0:,} | {r['steps']} | "
                 f"{r.get('peak_gpu_mem_gb', 'n/a')} |")
    e = res.get("eval", {})
    if e:
        L += ["", f"## Evaluation ({e['precision']}, score matrices of {e['rank_cells']:,} cells)", "",
              "| kind | users | seconds | users/s |", "|---|---:|---:|---:|"]
        for kind in ("sampled", "full"):
            L.append(f"| {kind} | {e[kind]['users']:,} | {e[kind]['seconds']:.2f} | {e[kind]['users_per_s']:,} |")
    best = max((r for r in res["train"] if "error" not in r), key=lambda r: r["steady_samples_per_s"] or 0,
               default=None)
    if best and not res["smoke"]:
        L += ["", "## Targets", "",
              f"- >= 50M training samples/s: best {best['steady_samples_per_s']:,} ({best['variant']}): "
              f"{'met' if (best['steady_samples_per_s'] or 0) >= 50e6 else 'NOT met'}",
              f"- full epoch < 20 s: {min(r['epoch_seconds'] for r in res['train'] if 'error' not in r):.1f} s: "
              f"{'met' if min(r['epoch_seconds'] for r in res['train'] if 'error' not in r) < 20 else 'NOT met'}"]
    path.write_text("\n".join(L) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (CI)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {list(VARIANTS)}")
    ap.add_argument("--compile", action="store_true", help="also run bf16-mixed with torch.compile")
    ap.add_argument("--max-steps", type=int, default=None, help="cap each epoch (default: a full epoch)")
    ap.add_argument("--eval-users", type=int, default=None, help="rank only this many users")
    ap.add_argument("--rank-cells", type=int, default=None, help="cells per full-ranking score matrix")
    ap.add_argument("--out", type=Path, default=None, help="markdown report (default bench/GPU_RESULTS.md; "
                                                            "smoke: none)")
    a = ap.parse_args()
    smoke = a.cpu_smoke or not torch.cuda.is_available()
    if smoke and not a.cpu_smoke:
        log("no CUDA device: running the reduced CPU mode")
    sizes = SMOKE if smoke else FULL
    trainer_name = "cpu" if smoke else "gpu"
    table, gen_s = simulated_table(sizes)
    log(f"generated {len(table):,} ratings in {gen_s:.1f} s")
    real_read = datamodule.read_cached
    datamodule.read_cached = lambda *args, **kwargs: table  # the in-memory data stands in for files
    try:
        over = ["data=netflix", f"data.root={WORK / 'gpu_in_memory'}", "logger=none", f"trainer={trainer_name}",
                "trainer.enable_progress_bar=false", "model=neumf", f"model.net.gmf_dim={sizes['gmf_dim']}",
                f"model.net.mlp_layers=[{','.join(map(str, sizes['mlp_layers']))}]",
                f"data.batch_size={sizes['batch_size']}", f"data.eval_batch_size={sizes['eval_batch_size']}"]
        cfg = compose_cfg(over, WORK / "gpu_run")
        t = time.perf_counter()
        dm, _ = build(cfg)
        setup_s = time.perf_counter() - t
    finally:
        datamodule.read_cached = real_read
    dm.prepare_data = lambda: None  # the data lives in memory: nothing to parse when fit starts
    log(f"datamodule set up in {setup_s:.1f} s: {dm.data_stats()}")
    device = torch.device("cuda" if not smoke else "cpu")
    res = {"command": "python bench/gpu.py " + " ".join(sys.argv[1:]), "smoke": smoke,
           "machine": {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
                       "cpu_count": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "torch": torch.__version__,
                       "cuda": torch.version.cuda, "lightning": pl.__version__,
                       "date": dt.datetime.now().astimezone().isoformat(timespec="seconds")},
           "data": {"ratings": len(table), "users": dm.num_users, "items": dm.num_items,
                    "train_positives": len(dm.train_users), "eval_users": len(dm.eval_users),
                    "generate_seconds": round(gen_s, 2), "setup_seconds": round(setup_s, 2)},
           "model": {"gmf_dim": sizes["gmf_dim"], "mlp_layers": sizes["mlp_layers"],
                     "batch_size": sizes["batch_size"], "negatives": dm.num_negatives},
           "train": []}
    out = a.out or (None if smoke else Path(__file__).resolve().parent / "GPU_RESULTS.md")
    variants = [v for v in a.variants.split(",") if v]
    runs = [(v, False) for v in variants] + ([("bf16-mixed", True)] if a.compile else [])
    last_model = None
    for name, compiled in runs:
        log(f"training: {name}{' compiled' if compiled else ''}")
        try:
            row, last_model = train_variant(cfg, dm, name, compiled, a.max_steps or (20 if smoke else None))
        except Exception as exc:  # record and go on: one failing variant must not cost the rest
            row = {"variant": name, "compiled": compiled, "error": f"{type(exc).__name__}: {exc}"}
        res["train"].append(row)
        log(json.dumps(row))
        save(res, out)
    if last_model is not None:
        log("evaluation")
        try:
            res["eval"] = evaluate(last_model, dm, device, a.rank_cells or sizes["rank_cells"],
                                   "bf16-mixed" if not smoke else "32-true", a.eval_users)
        except Exception as exc:
            res["eval_error"] = f"{type(exc).__name__}: {exc}"
        log(json.dumps(res.get("eval") or res.get("eval_error")))
    res["total_seconds"] = round(time.perf_counter() - T0, 1)
    save(res, out)
    print(json.dumps(res), flush=True)


def save(res: dict, out: Path | None) -> None:
    """Rewrite the markdown report and its JSON twin (so a run cut short keeps its figures)."""
    if out is not None:
        write_markdown(res, out)
        out.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
