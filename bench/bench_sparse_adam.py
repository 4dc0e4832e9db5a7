"""The optimizer step of `model.sparse_embeddings=true` at Netflix size: flixrec's LazyAdam
against torch.optim.SparseAdam (the same update), in the same process, on the same gradients.

    python bench/bench_sparse_adam.py                       # batch 1024 on 1 thread, 8192 on 2
    python bench/bench_sparse_adam.py --settings 8192:2 --rounds 5

The four embedding tables of the default NeuMF (GMF and MLP, users and movies, 32 columns each)
at Netflix size (480,189 users x 17,770 movies) get the sparse gradients of one training batch:
B users and B x (1 + 4) movies (a positive and 4 negatives each), drawn uniformly (the real
sampler draws users by their rating counts: more repeats, fewer distinct rows), each lookup
with a gradient of its own. Each round times `step()` of both optimizers over the same batches,
the one that goes first alternating between rounds; medians are reported, with the largest
difference between the two optimizers' tables after the steps (the same update: only the
order in which a row's repeated gradients are summed differs). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import flixrec  # noqa: F401  (OMP_WAIT_POLICY and the allocator settings, as in training)
import torch
from torch.nn import functional as F

from flixrec.optim import LazyAdam

USERS, MOVIES, DIM, NEGATIVES = 480_189, 17_770, 32, 4


def timed_steps(cls: type, batch: int, steps: int, seed: int) -> tuple[float, list[torch.Tensor]]:
    """Mean seconds per `step()` of `cls` over `steps` batches (after 3 untimed ones) and the
    tables it leaves."""
    gen = torch.Generator().manual_seed(seed)
    tables = [torch.nn.Parameter(torch.randn(n, DIM, generator=gen) * 0.01)
              for n in (USERS, MOVIES, USERS, MOVIES)]
    opt = cls(tables, lr=0.005)
    seconds = 0.0
    for i in range(3 + steps):
        users = torch.randint(USERS, (batch,), generator=gen)
        movies = torch.randint(MOVIES, (batch * (1 + NEGATIVES),), generator=gen)
        opt.zero_grad()
        # random weights give each lookup its own gradient, so repeated rows sum distinct values
        loss = sum((F.embedding(idx, t, sparse=True).pow(2).sum(1)
                    * torch.rand(len(idx), generator=gen)).sum()
                   for t, idx in zip(tables, (users, movies, users, movies)))
        loss.backward()
        t = time.perf_counter()
        opt.step()
        if i >= 3:
            seconds += time.perf_counter() - t
    return seconds / steps, [t.detach() for t in tables]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["1024:1", "8192:2"],
                    help="batch:threads pairs (positives per batch, torch threads)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    rows = []
    for setting in a.settings:
        batch, threads = map(int, setting.split(":"))
        torch.set_num_threads(threads)
        runs: dict[str, list[float]] = {"torch_sparse_adam": [], "lazy_adam": []}
        diff = 0.0
        for r in range(a.rounds):
            order = [("torch_sparse_adam", torch.optim.SparseAdam), ("lazy_adam", LazyAdam)]
            tables = {}
            for name, cls in order if r % 2 == 0 else order[::-1]:
                seconds, tables[name] = timed_steps(cls, batch, a.steps, seed=r)
                runs[name].append(seconds)
            diff = max(diff, *((x - y).abs().max().item()
                               for x, y in zip(tables["torch_sparse_adam"], tables["lazy_adam"])))
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append({"batch": batch, "threads": threads, "steps": a.steps, "rounds": a.rounds,
                     "torch_sparse_adam_ms": round(med["torch_sparse_adam"] * 1e3, 2),
                     "lazy_adam_ms": round(med["lazy_adam"] * 1e3, 2),
                     "speedup": round(med["torch_sparse_adam"] / med["lazy_adam"], 2),
                     "max_table_difference": diff,
                     "runs_ms": {k: [round(x * 1e3, 2) for x in v] for k, v in runs.items()}})
    print(json.dumps({"users": USERS, "movies": MOVIES, "dim": DIM, "negatives": NEGATIVES,
                      "rows": rows}), flush=True)


if __name__ == "__main__":
    main()
