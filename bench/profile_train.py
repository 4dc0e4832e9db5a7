"""Where a flixrec training step spends its time on this machine (CPU or GPU).

    python bench/profile_train.py                               # NeuMF, ML-100K, default batch
    python bench/profile_train.py --batch-size 4096 --model gmf
    python bench/profile_train.py --data netflix --root DIR      # any data config

Runs `trainer.fit` through `flixrec.run.build`/`build_trainer` (the real Lightning path) and
splits each step, with Lightning hooks and a wrapper around the datamodule's
`on_after_batch_transfer`, into: negative sampling, the rest of fetching and moving the batch
(Lightning's loop included), forward (`training_step`, logging included), backward, and the
optimizer step (Lightning's optimizer wrapper included). Then it times the same steps as a bare
PyTorch loop (same batches, sampler, net and Adam, no Lightning) to isolate Lightning's
per-step overhead, and lists the top operators of `torch.profiler`. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import flixrec  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_all import ML100K, WORK, compose_cfg  # noqa: E402

from flixrec.run import build, build_trainer  # noqa: E402


class PhaseTimer(pl.Callback):
    """Per-step wall time of each phase, summed over `steps` steps after `warmup`."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.phases = dict.fromkeys(("sampling", "fetch_and_loop", "forward", "backward", "optimizer"), 0.0)
        self.sampling = 0.0  # accumulated by the wrapped on_after_batch_transfer
        self.last_end = None
        self.active = False
        self.samples = 0

    def sync(self, module) -> float:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        step = trainer.global_step
        self.active = self.warmup <= step < self.warmup + self.steps
        if step == self.warmup + self.steps:
            trainer.should_stop = True
        self.t_start = self.sync(module)
        if self.active and self.last_end is not None:
            self.phases["fetch_and_loop"] += self.t_start - self.last_end - self.sampling
            self.phases["sampling"] += self.sampling
        self.sampling = 0.0

    def on_before_backward(self, trainer, module, loss) -> None:
        self.t_bwd = self.sync(module)

    def on_after_backward(self, trainer, module) -> None:
        self.t_opt = self.sync(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.last_end = self.sync(module)
        if self.active:
            self.phases["forward"] += self.t_bwd - self.t_start
            self.phases["backward"] += self.t_opt - self.t_bwd
            self.phases["optimizer"] += self.last_end - self.t_opt
            self.samples += batch["items"].numel()
        else:
            self.last_end = None if trainer.global_step < self.warmup else self.last_end


def endless_batches(dm):
    """The datamodule's training batches without end: a new epoch (and shuffle) whenever one
    runs out. Iterate it inside `bare_loop`, which gives the datamodule a stand-in trainer."""
    while True:
        yield from dm.train_dataloader()


def bare_loop(dm, model, steps: int, batches=None) -> float:
    """Seconds per step of the same work without Lightning: batches, sampler, net, the module's
    loss (with its L2 term) and its own optimizer (e.g. fused Adam). Pass one `endless_batches`
    to several calls to continue one epoch rather than shuffle a new one each time (3 s at 100M
    ratings)."""

    class FakeTrainer:  # what the datamodule asks of its trainer
        training, current_epoch, global_rank, world_size = True, 0, 0, 1

    saved = dm.trainer
    dm.trainer = FakeTrainer()
    device = next(model.parameters()).device
    opt = model.configure_optimizers()
    if opt is None:
        raise SystemExit(f"model {model.name!r} has nothing to train: no step to profile")
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    batches = endless_batches(dm) if batches is None else batches
    t = None
    for k in range(steps + 5):
        if k == 5:
            t = time.perf_counter()
        batch = dm.on_after_batch_transfer({k: v.to(device) for k, v in next(batches).items()}, 0)
        loss = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t) / steps
    dm.trainer = saved
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="neumf")
    ap.add_argument("--data", default="ml-100k")
    ap.add_argument("--root", default=str(ML100K))
    ap.add_argument("--batch-size", type=int, default=None, help="positives per batch (default: config)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--trainer", default="cpu")
    ap.add_argument("--top", type=int, default=12, help="operators listed from torch.profiler")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    a = ap.parse_args()
    over = [f"data={a.data}", f"data.root={a.root}", f"model={a.model}", f"trainer={a.trainer}",
            "logger=none", "trainer.enable_progress_bar=false", f"data.cache_dir={WORK / 'cache_profile'}",
            *([f"data.batch_size={a.batch_size}"] if a.batch_size else []), *a.overrides]
    cfg = compose_cfg(over, WORK / "profile_run")
    with open_dict(cfg):
        cfg.callbacks = None
        cfg.trainer.update(limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
                           max_epochs=10_000, max_steps=a.warmup + a.steps + 1)
    dm, model = build(cfg)
    timer = PhaseTimer(a.warmup, a.steps)
    original = dm.on_after_batch_transfer

    def timed_transfer(batch, idx):
        t = time.perf_counter()
        out = original(batch, idx)
        if out["users"].device.type == "cuda":
            torch.cuda.synchronize()
        timer.sampling += time.perf_counter() - t
        return out

    dm.on_after_batch_transfer = timed_transfer
    trainer = build_trainer(cfg)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=dm)
    dm.on_after_batch_transfer = original
    # the bare loop runs on the threads the fit ran on (`train_threads`), for a like comparison
    if cfg.get("train_threads") is not None:
        torch.set_num_threads(int(cfg.train_threads))
    steps = a.steps
    per_step = {k: v / steps * 1e3 for k, v in timer.phases.items()}
    step_ms = sum(per_step.values())
    batches = endless_batches(dm)
    bare_ms = bare_loop(dm, model, steps, batches) * 1e3

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() and
                                     a.trainer != "cpu" else [])
    with profile(activities=acts) as prof:
        bare_loop(dm, model, 20, batches)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:a.top]
    samples_per_step = cfg.data.batch_size * (1 + cfg.data.num_negatives)
    out = {
        "model": a.model, "data": a.data, "batch_size": cfg.data.batch_size,
        "samples_per_step": samples_per_step, "torch_threads": torch.get_num_threads(),
        "lightning_step_ms": round(step_ms, 3),
        "lightning_samples_per_s": round(timer.samples / (step_ms / 1e3 * steps)),
        "phases_ms": {k: round(v, 3) for k, v in per_step.items()},
        "phases_share": {k: round(v / step_ms, 3) for k, v in per_step.items()},
        "bare_step_ms": round(bare_ms, 3), "bare_samples_per_s": round(samples_per_step / bare_ms * 1e3),
        "lightning_overhead_share": round(max(0.0, step_ms - bare_ms) / step_ms, 3),
        "top_ops_bare_loop": [{"op": e.key, "self_cpu_share": round(e.self_cpu_time_total / total, 3),
                               "calls_per_step": round(e.count / 25, 1)} for e in top],
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
