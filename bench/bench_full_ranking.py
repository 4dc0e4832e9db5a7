"""Time full-ranking evaluation: every evaluated user's test item ranked against every movie they
did not rate in training, as `RecModule.test_step` does it (untrained nets; timing only).

    python bench/bench_full_ranking.py [DATA_ROOT_ML100K]   # default: /work/shared/data/ml-100k

Prints wall and CPU seconds per net for all users x all items (943 x 1,682 on MovieLens-100K).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from flixrec.data.sampling import rated_items
from flixrec.models.module import full_ranks
from flixrec.run import build

ROOT = Path(__file__).resolve().parents[1]
NETS = {
    "neumf (NCF defaults)": ["model=neumf"],
    "neumf (ml100k tuned)": ["experiment=neumf_ml100k"],
    "gmf": ["model=gmf"], "mlp": ["model=mlp"], "mf": ["model=mf"], "svd": ["model=svd"],
    "fusion": ["model=fusion"], "fusion per-user": ["model=fusion", "model.net.per_user_weights=true"],
    "pop": ["model=pop"],
}


def main(data_root: str) -> None:
    torch.manual_seed(0)
    for name, overrides in NETS.items():
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["data=ml-100k", f"data.root={data_root}", "logger=none",
                                              "paths.output_dir=/tmp/flixrec-bench", *overrides])
        cfg.paths.root_dir = str(ROOT)
        dm, model = build(cfg)
        net = model.net.eval()
        users = dm.eval_users
        rows, items = rated_items(dm.train_keys, users, dm.num_items)
        with torch.inference_mode():
            full_ranks(net, users[:8], dm.test_items[:8, 0], rows[:0], items[:0], dm.num_items)  # warm-up
            wall, cpu = time.perf_counter(), time.process_time()
            full_ranks(net, users, dm.test_items[:, 0], rows, items, dm.num_items, model.full_ranking_cells)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name:22s} {len(users)} users x {dm.num_items} items: {wall:.3f} s wall, "
              f"{cpu:.3f} s CPU ({torch.get_num_threads()} threads)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/ml-100k")
