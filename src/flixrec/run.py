"""Training and evaluation glue behind train.py and evaluate.py (library code, Hydra-free
except for the DictConfig it is handed)."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from flixrec.errors import ConfigError, FlixrecError

log = logging.getLogger("flixrec")

# Lightning's advertising tips and warnings that do not apply to how flixrec drives it
for _pattern in (".*LeafSpec.*", ".*callbacks used to create the checkpoint.*",
                 ".*smaller than the logging interval.*", ".*does not have many workers.*"):
    warnings.filterwarnings("ignore", message=_pattern)
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: not str(record.msg).startswith("💡"))


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a temp file renamed over the target."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _floats(metrics: dict, prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: round(float(v), 6) for k, v in metrics.items() if k.startswith(prefix)}


def check_trainer(cfg: DictConfig) -> None:
    """Fail before any work when the trainer asks for hardware this machine lacks."""
    acc = str(cfg.trainer.get("accelerator", "cpu"))
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer accelerator={acc!r} needs a CUDA GPU, but torch sees none "
                          f"(torch {torch.__version__}, cuda available: False); use trainer=cpu")
    model = cfg.get("model") or {}
    if model.get("sparse_embeddings"):
        if cfg.trainer.get("gradient_clip_val"):
            raise ConfigError("model.sparse_embeddings=true cannot be combined with trainer.gradient_clip_val: "
                              "Lightning's gradient clipping does not take sparse gradients")
        strategy, devices = str(cfg.trainer.get("strategy", "auto")), cfg.trainer.get("devices", 1)
        if "ddp" in strategy or (isinstance(devices, int) and devices > 1) or cfg.trainer.get("num_nodes", 1) > 1:
            raise ConfigError(f"model.sparse_embeddings=true runs in one process, not with trainer strategy="
                              f"{strategy} devices={devices}; drop it for DDP")
    optimizer = model.get("optimizer") or {}
    if str(cfg.trainer.get("precision")) in ("16", "16-mixed") and cfg.trainer.get("gradient_clip_val") \
            and optimizer.get("fused"):
        raise ConfigError("trainer.precision=16-mixed with trainer.gradient_clip_val needs an optimizer "
                          "that Lightning can unscale before clipping, which a fused one is not: set "
                          "model.optimizer.fused=false, or use trainer.precision=bf16-mixed (no scaling)")


def check_run(cfg: DictConfig) -> None:
    """Fail before any work on a train.py command that cannot give what metrics.json claims:
    a test of weights nothing trained, a seed torch cannot take, or a checkpoint (resumed, or
    tested with train=false) that was trained on other data, model or seed (`check_checkpoint`)."""
    seed = cfg.get("seed")
    if not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
        raise ConfigError(f"seed={seed!r}: use a whole number from 0 to {2 ** 32 - 1}")
    if cfg.test and not cfg.ckpt_path:
        if not cfg.train:
            raise ConfigError("train=false test=true needs ckpt_path=RUN/checkpoints/best.ckpt: without "
                              "one it would test untrained weights (or use evaluate.py ckpt_path=...)")
        if cfg.trainer.get("max_epochs") == 0:
            raise ConfigError("trainer.max_epochs=0 trains nothing, so the test would score untrained "
                              "weights; train at least one epoch, or set test=false")
    if cfg.ckpt_path and (cfg.train or cfg.test):
        check_checkpoint(cfg)


# what a run from a checkpoint may set anew: how it runs and where files are, not what it
# trains on or what it trains (trainer, logger, callbacks and paths are not compared at all;
# max_epochs may grow). The locations may differ as text for the same files (a relative path,
# another working directory, a pre-training sweep's directory), and a checkpoint of other
# data fails to load anyway when the sizes differ; data.name and the generator's settings
# are compared.
RESUME_MAY_CHANGE = ("data.root", "data.cache_dir", "data.eval_batch_size", "data.batches_on_device",
                     "data.full_ranking_users", "model.compile", "model.full_ranking",
                     "model.full_ranking_cells", "model.net.gmf_ckpt", "model.net.mlp_ckpt")


def _flat(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}.{k}"))
        return out
    return {prefix: node}


def check_checkpoint(cfg: DictConfig) -> None:
    """Refuse to resume or test `cfg.ckpt_path` with another seed, data or model setting than
    its run had: another seed alone changes the split and the candidates, so a resumed run's
    carried-over best score, or the test, would be of another test set. Settings the
    checkpoint does not record (written before they existed) are not compared. The error lists
    the differences and the command that resumes the run."""
    import shlex

    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such checkpoint file")
    ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    stored = ckpt.get("flixrec_config")
    if not stored:
        raise ConfigError(f"{path} holds no flixrec run configuration; was it written by train.py?")
    if "flixrec_built_from" in ckpt:  # neumf_pretrained stores the plain NeuMF it became
        stored = {**stored, "model": {**stored["model"], "net": ckpt["flixrec_built_from"]}}
    now = OmegaConf.to_container(cfg, resolve=True)
    before, after = ({**_flat(c.get("data"), "data"), **_flat(c.get("model"), "model"), "seed": c.get("seed")}
                     for c in (stored, now))
    differ = [k for k in sorted(before.keys() & after.keys())
              if k not in RESUME_MAY_CHANGE and before[k] != after[k]]
    if not differ:
        return

    def show(v: Any) -> str:
        return str(v) if len(str(v)) <= 60 else str(v)[:57] + "..."

    lines = [f"  {k}: {show(before[k])} in the checkpoint, {show(after[k])} now" for k in differ[:8]]
    lines += [f"  ... and {len(differ) - 8} more"] if len(differ) > 8 else []
    hint = ""
    if cfg.train:
        overrides = path.resolve().parent.parent / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            # as written on the command line: an interpolation stays unresolved text
            words = [str(o) for o in OmegaConf.to_container(OmegaConf.load(overrides), resolve=False)
                     if not str(o).startswith(("ckpt_path=", "hydra."))]
            hint = ("\nResume it with the overrides its run was started with (raise trainer.max_epochs "
                    "to train further):\n  python train.py " +
                    " ".join(shlex.quote(o) for o in [*words, f"ckpt_path={cfg.ckpt_path}"]))
    else:
        hint = f"\nTo test it as it was trained: python evaluate.py ckpt_path={shlex.quote(str(cfg.ckpt_path))}"
    what = "a resumed run" if cfg.train else "a test of it"
    raise ConfigError(f"ckpt_path={path} was trained with other settings than this command's, and "
                      f"{what} must keep them:\n" + "\n".join(lines) + hint)


def build_trainer(cfg: DictConfig, with_callbacks: bool = True):
    """The Lightning Trainer of `cfg.trainer`, with the configured callbacks and loggers."""
    from hydra.utils import instantiate

    from flixrec.callbacks import AtomicCheckpointIO, TrainThreads

    check_trainer(cfg)
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c is not None]
    callbacks = []
    if with_callbacks:
        for name, c in (cfg.get("callbacks") or {}).items():
            if c is None or (not loggers and name == "lr_monitor") or \
                    (name == "progress_bar" and not cfg.trainer.get("enable_progress_bar", True)):
                continue
            callbacks.append(instantiate(c))
    if cfg.get("train_threads") is not None:
        callbacks.append(TrainThreads(int(cfg.train_threads)))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                       plugins=[AtomicCheckpointIO()])


def build(cfg: DictConfig):
    """Instantiate and set up the data module, then the model sized from the data."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")
    model = instantiate(cfg.model, net=net_data_args(cfg.model.net, dm))
    candidates = 1 + dm.num_test_negatives
    too_large = [k for k in model.test_metrics.ks if k > candidates]
    if too_large:
        raise ConfigError(
            f"model.ks={list(model.test_metrics.ks)}: K={too_large[0]} is more than the {candidates} "
            f"candidates ranked per user (the held-out movie + data.num_test_negatives="
            f"{dm.num_test_negatives}), so every model would score HR@{too_large[0]} = 1; "
            f"use K <= {candidates} or raise data.num_test_negatives")
    return dm, model


def net_data_args(net_cfg: DictConfig, dm) -> dict[str, Any]:
    """What a net takes from the data at build time: always the sizes, and the training item
    counts for a net whose constructor asks for `item_counts` (pop)."""
    import inspect

    from hydra.utils import get_object

    args: dict[str, Any] = {"num_users": dm.num_users, "num_items": dm.num_items}
    if "item_counts" in inspect.signature(get_object(net_cfg._target_)).parameters:
        args["item_counts"] = dm.item_counts
    return args


def key_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings that tell runs apart in a comparison or in TensorBoard's hparams tab."""
    net = {f"net.{k}": (str(v) if not isinstance(v, (int, float, str, bool)) else v)
           for k, v in OmegaConf.to_container(cfg.model.net, resolve=True).items()
           if not k.startswith("_")}
    opt = cfg.model.optimizer or {}  # null for a model with nothing to train (pop)
    scheduler = cfg.model.get("scheduler")
    return {**protocol_hparams(cfg),
            "optimizer": str(opt.get("_target_", "none")).rsplit(".", 1)[-1], "lr": opt.get("lr"),
            "scheduler": _short(scheduler) if scheduler else "none",
            "batch_size": cfg.data.batch_size, "num_negatives": cfg.data.num_negatives,
            "negatives_exclude": cfg.data.get("negatives_exclude", "train"),
            "recency_half_life": cfg.data.get("recency_half_life") or "none",
            "full_ranking_users": cfg.data.get("full_ranking_users") or "all",
            "max_epochs": cfg.trainer.max_epochs, "precision": str(cfg.trainer.precision),
            "callbacks": ",".join(sorted(k for k, v in (cfg.get("callbacks") or {}).items()
                                         if v is not None and k not in _ALWAYS_CALLBACKS)) or "default",
            "loss": cfg.model.get("loss", "bce"), "l2": cfg.model.get("l2", 0.0), **net}


# callbacks every run has (or that change nothing measured); the others (ema, early stopping)
# change which weights are tested, so a comparison names them
_ALWAYS_CALLBACKS = {"model_checkpoint", "lr_monitor", "progress_bar"}


def protocol_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The settings that define what a run's figures measure (the evaluation protocol): runs
    that differ in one scored different tests, which `report.compare` never averages together
    (`report.PROTOCOL` lists these keys)."""
    from hydra.utils import instantiate

    data = cfg.data
    subset = data.get("subset")
    split = data.get("split", "leave_one_out")
    if split == "temporal":  # the fraction only shapes the temporal split
        split = f"temporal({data.get('temporal_fraction', 0.8)})"
    return {"split": split, "subset": str(instantiate(subset)) if subset else "full",
            "num_test_negatives": data.get("num_test_negatives", 100),
            "min_ratings": data.get("min_ratings", 3)}


def _short(node: Any) -> str:
    """A config node as one short line: `Class(key=value, ...)` for an instantiable one."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return str(node)
    args = ", ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_"))
    return f"{str(node._target_).rsplit('.', 1)[-1]}({args})"


def popularity_baseline(dm, ks) -> dict:
    """Test metrics of ranking the test candidates by training popularity."""
    from flixrec.metrics import RankingMetrics

    metric = RankingMetrics(tuple(ks))
    metric.update(dm.popularity_scores("test"))
    return {k: round(float(v), 6) for k, v in metric.compute().items()}


def oracle_baseline(dm, ks, full: bool, max_full_cells: int = 10 ** 8) -> dict | None:
    """Test metrics of ranking by the generator's true preference scores: the ceiling on
    synthetic data ({"test": ..., "test_full": ...}); None for real data. The full-ranking
    oracle is skipped above `max_full_cells` users x items (numpy scoring would take minutes)."""
    from flixrec.data.sampling import rated_items
    from flixrec.metrics import RankingMetrics
    from flixrec.models.module import full_ranks

    users = dm.eval_users
    try:
        scores = dm.true_scores(users[:, None], dm.test_items)
    except KeyError as err:  # ids the truth file lacks: report the run without its ceiling
        log.warning("no oracle: the generator's truth file does not cover these ratings (%s)", err)
        return None
    if scores is None:
        return None
    sampled = RankingMetrics(tuple(ks))
    sampled.update(scores)
    out = {"test": {k: round(float(v), 6) for k, v in sampled.compute().items()}}
    ranked = dm.full_ranking_rows()  # the users the model is fully ranked on
    users, positives = users[ranked], dm.test_items[ranked, 0]
    if full and len(users) * dm.num_items <= max_full_cells:
        rows, items = rated_items(dm.train_keys.cpu(), users, dm.num_items)
        whole = RankingMetrics(tuple(ks))
        oracle = lambda u, i: dm.true_scores(u[:, None], i)  # noqa: E731 - scores like a net
        whole.update(ranks=full_ranks(oracle, users, positives, rows, items, dm.num_items))
        out["test_full"] = {k: round(float(v), 6) for k, v in whole.compute().items()}
    return out


def test_blocks(trainer, model, dm, ckpt_path: str | None) -> dict[str, Any]:
    """Test the checkpoint once: the metrics.json blocks `test`, `test_full` (every unrated
    movie a candidate; when model.full_ranking), `baseline_pop` and, on synthetic data, `oracle`."""
    metrics = trainer.test(model, datamodule=dm, ckpt_path=ckpt_path, verbose=False)[0]
    out: dict[str, Any] = {"test": _floats(metrics, "test/")}
    if any(k.startswith("test_full/") for k in metrics):
        out["test_full"] = _floats(metrics, "test_full/")
        out["test_full_users"] = len(dm.full_ranking_rows())  # all, or data.full_ranking_users
    out["baseline_pop"] = {"test": popularity_baseline(dm, model.test_metrics.ks)}
    oracle = oracle_baseline(dm, model.test_metrics.ks, full="test_full" in out)
    if oracle is not None:
        out["oracle"] = oracle
    return out


def train(cfg: DictConfig) -> float | None:
    """Fit, select the checkpoint on val/hr@10, test it once, write metrics.json.

    Returns the best val/hr@10 (for sweepers), or None when fitting was skipped.
    """
    import pytorch_lightning as pl

    out_dir = Path(cfg.paths.output_dir)
    check_trainer(cfg)
    check_run(cfg)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t0 = time.perf_counter()
    dm, model = build(cfg)
    result: dict[str, Any] = {"kind": "train", "model": model.name, "data": dm.name,
                              "seed": int(cfg.seed), "hparams": key_hparams(cfg),
                              "data_stats": dm.data_stats(),
                              "prepare_seconds": round(time.perf_counter() - t0, 3)}
    if not cfg.train and not cfg.test:
        write_json(out_dir / "metrics.json", result)
        log.info("Data prepared in %.1f s; wrote %s", result["prepare_seconds"], out_dir / "metrics.json")
        return None
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = build_trainer(cfg)
    ckpt_cb = next((c for c in trainer.callbacks if isinstance(c, pl.callbacks.ModelCheckpoint)), None)
    best_path = cfg.ckpt_path
    if cfg.train:
        trainer.fit(model, datamodule=dm, ckpt_path=cfg.ckpt_path)
        best_path = (ckpt_cb.best_model_path or ckpt_cb.last_model_path) if ckpt_cb else None
        result["train_seconds"] = round(model.train_seconds, 3)
        # every rank runs the same number of equal batches: the total is world_size times ours
        samples = model.train_samples * trainer.world_size
        result["train_samples_per_s"] = round(samples / max(model.train_seconds, 1e-9))
    if best_path:
        ckpt = torch.load(best_path, map_location="cpu", weights_only=False)
        result["best_epoch"] = int(ckpt["epoch"])
        result["checkpoint"] = os.path.relpath(best_path, out_dir)
        result["val"] = _floats(trainer.validate(model, datamodule=dm, ckpt_path=best_path,
                                                 verbose=False)[0], "val/")
    if cfg.test:
        result.update(test_blocks(trainer, model, dm, best_path))
    if trainer.is_global_zero:
        write_json(out_dir / "metrics.json", result)
        log_to_tensorboard(trainer, model, dm, result)
        print_summary(result, out_dir)
    return result.get("val", {}).get("hr@10")


def log_to_tensorboard(trainer, model, dm, result: dict) -> None:
    """Fill TensorBoard's hparams tab (key config, final val/test metrics) and its projector
    (item embeddings labelled with titles)."""
    from pytorch_lightning.loggers import TensorBoardLogger

    for logger in trainer.loggers:
        if not isinstance(logger, TensorBoardLogger):
            continue
        finals = {f"final/{block}_{k}": v for block in ("val", "test")
                  for k, v in result.get(block, {}).items()}
        logger.log_hyperparams({**result["hparams"], "model": result["model"], "data": result["data"],
                                "seed": result["seed"]}, metrics=finals)
        vectors = item_vectors(model.net)
        if vectors is not None:
            logger.experiment.add_embedding(vectors, metadata=dm.item_labels(), tag="item_embeddings",
                                            global_step=trainer.global_step)
        logger.finalize("success")  # flushed and closed: the run writes nothing more there


def item_vectors(net: torch.nn.Module) -> torch.Tensor | None:
    """Item embedding tables of a net side by side, (num_items, D) float32, or None."""
    tables = [m.weight.detach().float().cpu() for n, m in net.named_modules()
              if isinstance(m, torch.nn.Embedding) and "item" in n]
    return torch.cat(tables, dim=1) if tables else None


def evaluate(cfg: DictConfig) -> None:
    """Test a checkpoint with the data and model rebuilt from the config stored in it."""
    import pytorch_lightning as pl

    if cfg.get("compare"):
        from flixrec.report import compare

        compare(cfg.compare, cfg.paths.output_dir)
        return
    if not cfg.ckpt_path:
        raise ConfigError("evaluate.py needs ckpt_path=RUN/checkpoints/best.ckpt (or compare=DIR)")
    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={path}: no such checkpoint file")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not ckpt.get("flixrec_config"):
        raise ConfigError(f"{path} holds no flixrec run configuration; was it written by train.py?")
    if cfg.get("recommend") and cfg.recommend.user is not None:
        recommend(ckpt, int(cfg.recommend.user), int(cfg.recommend.n))
        return
    run_cfg = OmegaConf.create(ckpt["flixrec_config"])
    run_cfg.trainer = cfg.trainer
    run_cfg.logger = None
    run_cfg.paths.output_dir = cfg.paths.output_dir
    if cfg.get("full_ranking_users") is not None:  # e.g. a quicker full ranking than in training
        n = str(cfg.full_ranking_users)
        if n != "all" and not n.isdigit():
            raise ConfigError(f"full_ranking_users={n}: a number of users, or all")
        run_cfg.data.full_ranking_users = None if n == "all" else int(n)
    pl.seed_everything(run_cfg.seed, workers=True, verbose=False)
    dm, model = build(run_cfg)
    trainer = build_trainer(run_cfg, with_callbacks=False)
    result = {"kind": "evaluate", "model": model.name, "data": dm.name, "seed": int(run_cfg.seed),
              "checkpoint": str(path.resolve()), "best_epoch": int(ckpt["epoch"]),
              "data_stats": dm.data_stats(), **test_blocks(trainer, model, dm, str(path))}
    out_dir = Path(cfg.paths.output_dir)
    write_json(out_dir / "metrics.json", result)
    print_summary(result, out_dir)


def recommend(ckpt: dict, customer_id: int, n: int) -> list[tuple[int, str, float]]:
    """Print and return a user's top-n movies by the checkpoint's model, excluding every movie
    the user rated anywhere in the data: [(movie id, label, score)]."""
    import numpy as np

    run_cfg = OmegaConf.create(ckpt["flixrec_config"])
    dm, model = build(run_cfg)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    ids = dm.table.user_ids
    pos = int(np.searchsorted(ids, customer_id))
    if pos >= len(ids) or ids[pos] != customer_id:
        raise ConfigError(f"recommend.user={customer_id}: no such customer id in data {dm.name!r} "
                          f"({len(ids)} users, ids {ids[0]}..{ids[-1]})")
    items = torch.arange(dm.num_items)
    users = torch.full_like(items, pos)
    with torch.no_grad():
        scores = model.net(users, items).float()
    rated = torch.from_numpy(dm.table.items[dm.table.users == pos].astype(np.int64))
    scores[rated] = float("-inf")
    top = scores.topk(min(n, int(torch.isfinite(scores).sum()))).indices.tolist()
    labels = dm.item_labels()
    rows = [(int(dm.table.item_ids[i]), labels[i], float(scores[i])) for i in top]
    print(f"Top {len(rows)} movies for customer {customer_id} by {model.name} "
          f"({len(rated)} rated movies excluded):")
    for rank, (movie, label, score) in enumerate(rows, 1):
        print(f"{rank:3d}. {label}  [movie {movie}, score {score:.3f}]")
    return rows


def print_summary(result: dict, out_dir: Path) -> None:
    """A one-screen summary of a run."""
    lines = [f"flixrec {result['model']} on {result['data']} (seed {result['seed']})"]
    if "best_epoch" in result:
        lines.append(f"  best epoch (val/hr@10): {result['best_epoch']}")
    ranked, everyone = result.get("test_full_users"), result.get("data_stats", {}).get("eval_users")
    sample = f" ({ranked:,} sampled users)" if ranked is not None and ranked != everyone else ""
    labels = {"val": "val:  ", "test": "test: ",
              "test_full": f"test, ranked against every unrated movie{sample}: "}
    for block, label in labels.items():
        if block in result:
            lines.append(f"  {label}" + "  ".join(f"{k} {v:.4f}" for k, v in result[block].items()
                                                  if k in ("hr@10", "ndcg@10", "mrr")))
    for block, values in (result.get("oracle") or {}).items():
        what = f"every unrated movie{sample}" if block == "test_full" else "test candidates"
        lines.append(f"  oracle (true preferences, the ceiling), {what}: hr@10 {values['hr@10']:.4f}  "
                     f"ndcg@10 {values['ndcg@10']:.4f}")
    if "baseline_pop" in result:
        b = result["baseline_pop"]["test"]
        lines.append(f"  most-popular baseline test: hr@10 {b['hr@10']:.4f}  ndcg@10 {b['ndcg@10']:.4f}")
    if "train_samples_per_s" in result:
        lines.append(f"  trained {result['train_seconds']:.1f} s at {result['train_samples_per_s']:,} samples/s")
    lines.append(f"  run directory: {out_dir}")
    if result.get("checkpoint"):
        lines.append(f"  checkpoint: {out_dir / result['checkpoint']}")
    if (out_dir / "tensorboard").exists():
        lines.append(f"  TensorBoard: tensorboard --logdir {out_dir / 'tensorboard'}")
    print("\n".join(lines), flush=True)


def skip_exit_collections() -> None:
    """Call when a command has written and closed its outputs: the interpreter's shutdown then
    skips its garbage collections over the objects alive now (`gc.freeze`). Those passes over
    torch's and Lightning's objects took ~0.9 s of every command's exit on the 2-core machine,
    a sixth of a short training run. atexit handlers (logging's flush and close) still run."""
    gc.freeze()


def guarded(task: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run `task`; turn user errors into one clear paragraph and a non-zero exit."""
    from hydra.errors import InstantiationException

    try:
        return task(cfg)
    except (FlixrecError, FloatingPointError) as exc:
        message = str(exc)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, (FlixrecError, FloatingPointError)):
            message = str(cause)
        else:
            message = f"could not build an object from the configuration: {exc}"
    except torch.cuda.OutOfMemoryError as exc:
        message = out_of_memory_message(exc, cfg)
    except Exception as exc:  # a bug, not bad input: keep the traceback, but in a file
        out_dir = Path(cfg.paths.output_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "error.txt").write_text(traceback.format_exc())
        message = (f"unexpected {type(exc).__name__}: {exc} (traceback in {out_dir / 'error.txt'})")
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "FAILED").write_text(message + "\n")
    log.error(message)
    print(f"flixrec: error: {message}", file=sys.stderr, flush=True)
    if _in_multirun():
        # the other jobs of the sweep go on; the sweep reports this one at its end
        return float("nan")
    sys.exit(1)


def out_of_memory_message(exc: BaseException, cfg: DictConfig) -> str:
    """What to do about a GPU out-of-memory error: smaller batches, with the current sizes."""
    lines = str(exc).strip().splitlines()
    data = cfg.get("data") or {}
    now = {k: data.get(k) for k in ("batch_size", "eval_batch_size")}
    sizes = [f"data.{k} (now {v})" if v is not None else f"data.{k}" for k, v in now.items()]
    return (f"the GPU ran out of memory ({lines[0] if lines else 'CUDA out of memory'}). Use a "
            f"smaller batch: lower {sizes[0]} if it happened in training or {sizes[1]} if in "
            f"validation or testing; a smaller model or trainer.precision=bf16-mixed also helps")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
