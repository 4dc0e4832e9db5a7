"""One LightningModule for every net: a loss on sampled negatives (BCE-with-logits by default),
ranking metrics."""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits, cross_entropy, logsigmoid

from flixrec.errors import ConfigError
from flixrec.metrics import RankingMetrics, full_positive_rank

# what a ReduceLROnPlateau scheduler watches: the validation figure that also picks the checkpoint
PLATEAU_MONITOR = "val/hr@10"

# a net without trainable parameters (pop) runs with no optimizer on purpose
warnings.filterwarnings("ignore", message=".*configure_optimizers` returned `None`.*")


LOSSES = ("bce", "bpr", "softmax")


def check_loss(kind: str) -> str:
    """`kind` if it names a training loss (LOSSES), else a ConfigError naming the choices."""
    if kind not in LOSSES:
        raise ConfigError(f"model.loss={kind!r}: choose one of {', '.join(LOSSES)}")
    return kind


def ranking_loss(logits: Tensor, kind: str = "bce", weights: Tensor | None = None) -> Tensor:
    """Training loss of grouped logits (B, 1 + n): the positive in column 0, n sampled negatives.

    - "bce": binary cross-entropy with logits, label 1 for column 0 and 0 for the rest, mean
      over all B * (1 + n) cells (the NCF paper's log loss);
    - "bpr": -log sigmoid(positive - negative), mean over the B * n pairs (Rendle et al. 2009);
    - "softmax": cross-entropy of the positive against its own negatives (sampled softmax; with
      uniform negatives the log-Q correction is a constant and drops out), mean over B rows.

    Every kind is computed from logits in float32, so it is safe under mixed precision.
    weights (B,), optional: one weight per positive, for it and its negatives (each row's
    loss is multiplied by it; the mean is still over the same count).
    """
    logits = logits.float()
    if check_loss(kind) == "bce":
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        return binary_cross_entropy_with_logits(logits, labels, None if weights is None else weights[:, None])
    if kind == "bpr":
        per_pair = -logsigmoid(logits[:, :1] - logits[:, 1:])
        return (per_pair if weights is None else per_pair * weights[:, None]).mean()
    per_row = cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device),
                            reduction="none")  # "softmax"
    return (per_row if weights is None else per_row * weights).mean()


def score_candidates(net: nn.Module, users: Tensor, items: Tensor) -> Tensor:
    """Scores (B, C) float32 of candidate matrix `items` (B, C) for `users` (B,)."""
    return net(users, items).float()


def full_ranks(net: nn.Module, users: Tensor, positives: Tensor, seen_rows: Tensor,
               seen_items: Tensor, num_items: int, max_cells: int = 1 << 20) -> Tensor:
    """0-based rank of each user's held-out item among ALL items the user did not rate in
    training (see `metrics.full_positive_rank`; ties count against the held-out item).

    Convention (as in most full-ranking evaluations): only training interactions are masked.
    Everything else stays a candidate, including the user's validation item and, under the
    temporal split, their other ratings after the cut: the model never trained on them.

    users, positives: (B,) int64; seen_rows, seen_items: (S,) int64, the training items of
    each row, rows ascending (`EvalBatches` provides them). Users are scored in chunks of
    (max_cells // num_items, num_items) score matrices, so memory stays bounded at any scale.
    Returns int64 (B,) on the device of `users`.
    """
    chunk = max(1, max_cells // num_items)
    all_items = torch.arange(num_items, device=users.device)
    bounds = torch.searchsorted(seen_rows, torch.arange(0, len(users) + chunk, chunk,
                                                        device=seen_rows.device)).tolist()
    ranks = []
    for c, start in enumerate(range(0, len(users), chunk)):
        u = users[start:start + chunk]
        n = len(u)
        scores = net(u, all_items[None]).float()  # one shared item list: see models.nets
        excluded = torch.zeros((n, num_items), dtype=torch.bool, device=users.device)
        lo, hi = bounds[c], bounds[c + 1]
        excluded[seen_rows[lo:hi] - start, seen_items[lo:hi]] = True
        ranks.append(full_positive_rank(scores, positives[start:start + n], excluded))
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=users.device)


class RecModule(pl.LightningModule):
    """Trains and evaluates `net` on batches {"users": (B,), "items": (B, 1+n)}: in training,
    column 0 is a positive and the rest are its sampled negatives (labels 1, 0, ..., 0); in
    evaluation, column 0 is the held-out item and the rest are its fixed candidates.

    Args:
        net: a module mapping users (B,) and items (B, m) to logits (B, m) (`models.nets`;
            full ranking also passes items (1, num_items)). A net may offer
            `regularization(users, items) -> Tensor`, a penalty on the rows a batch touches.
        optimizer: partial taking `params`, e.g. `partial(torch.optim.Adam, lr=1e-3)`; None
            only for a net without trainable parameters (pop), which then trains trivially.
        scheduler: optional partial taking `optimizer`, stepped once per epoch. A
            `ReduceLROnPlateau` watches `val/hr@10` (the checkpoint's monitor), so it needs
            `mode: max`.
        name: model name reported in metrics.json.
        ks: cut-offs for HR@k and NDCG@k.
        l2: weight of the net's `regularization` term in the training loss (0: none).
        full_ranking: at test time, also rank each held-out item against every item the user
            did not rate in training (logged as `test_full/*`), when test batches carry the
            training items.
        full_ranking_cells: size of one full-ranking score matrix (users x items); bounds memory.
        compile: run the training forward through `torch.compile` (the net itself, its
            checkpoints and evaluation stay eager). The first steps pay the compilation.
        loss: "bce" (default), "bpr" or "softmax"; see `ranking_loss`.
        sparse_embeddings: give the net's embedding tables sparse gradients, so a step costs
            what its batch draws rather than the tables' size (for Netflix-size tables on a
            CPU); torch.optim.Adam then becomes `optim.SparseRowsAdam` (lazy Adam on the
            tables' rows). One process only.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer] | None,
                 scheduler: Callable[..., Any] | None = None, name: str = "model",
                 ks: Sequence[int] = (5, 10, 20), l2: float = 0.0, full_ranking: bool = True,
                 full_ranking_cells: int = 1 << 20, compile: bool = False, loss: str = "bce",
                 sparse_embeddings: bool = False) -> None:
        super().__init__()
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.name = name
        if l2 < 0:
            raise ConfigError(f"model.l2={l2}: the regularization weight cannot be negative")
        if l2 > 0 and not hasattr(net, "regularization"):
            raise ConfigError(f"model.l2={l2}, but {type(net).__name__} has no regularization term; "
                              f"set model.l2=0 (or weight decay in model.optimizer)")
        self.l2, self.full_ranking, self.full_ranking_cells = l2, full_ranking, full_ranking_cells
        check_loss(loss)  # at build time, not at the first training step
        self.loss = loss
        self.sparse_embeddings = sparse_embeddings
        for module in net.modules():
            if isinstance(module, nn.Embedding):
                module.sparse = sparse_embeddings
        self.compile = compile
        self._compiled: Callable[..., Tensor] | None = None
        # Lightning's loop needs an optimizer; a net with nothing to train steps through the
        # epochs without one (its checkpoints, validation and test work as for any model)
        self.automatic_optimization = any(p.requires_grad for p in net.parameters())
        if self.automatic_optimization and optimizer is None:
            raise ConfigError(f"model.optimizer is null, but {type(net).__name__} has parameters to train")
        self.val_metrics = RankingMetrics(tuple(ks))
        self.test_metrics = RankingMetrics(tuple(ks))
        self.test_full_metrics = RankingMetrics(tuple(ks))
        self._full_ranked = False  # did this test epoch rank against the full catalogue?
        self.run_config: dict | None = None  # the resolved run config, stored in checkpoints
        self._samples = 0
        self._loss_sum: Tensor | float = 0.0  # sum over the epoch of loss x samples, on the device
        self._log_every = 1  # trainer.log_every_n_steps, read when training starts
        self._epoch_start = 0.0
        self.train_seconds = 0.0
        self.train_samples = 0

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.net(users, items)

    def _train_forward(self, users: Tensor, items: Tensor) -> Tensor:
        if not self.compile:
            return self.net(users, items)
        if self._compiled is None:
            # made on first use and kept out of the module tree (object.__setattr__), so
            # state_dict keys stay the net's and pickling skips it (__getstate__)
            object.__setattr__(self, "_compiled", torch.compile(self.net))
        return self._compiled(users, items)

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_compiled"] = None
        return state

    def training_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The objective of a training batch {"users": (B,), "items": (B, 1 + n), optional
        "weights": (B,)}: `model.loss` of each positive against its negatives, weighted per
        positive (data.recency_half_life), plus `model.l2` times the rows' L2 term."""
        users, items = batch["users"], batch["items"]
        loss = ranking_loss(self._train_forward(users, items), self.loss, batch.get("weights"))
        if self.l2 > 0:
            loss = loss + self.l2 * self.net.regularization(users, items)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        # the step value is logged only on the steps the logger writes (trainer.log_every_n_steps;
        # decided before the mock optimizer step below advances global_step): a `self.log` call
        # costs ~0.3 ms on the CPU, 10% of a default step. The epoch mean is kept here.
        log_step = self._log_every > 0 and (self.global_step + 1) % self._log_every == 0
        loss = self.training_loss(batch)
        # on an accelerator, reading the loss every step would stall the device on the host
        if (loss.device.type == "cpu" or batch_idx % 50 == 0) and not torch.isfinite(loss):
            where = "" if loss.device.type == "cpu" else " (checked every 50 steps on this device)"
            raise FloatingPointError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}{where}: lower model.optimizer.lr or use trainer.precision=32")
        if not self.automatic_optimization:
            # nothing to update; the (mock) optimizer step only advances global_step, without
            # which Lightning would write no checkpoint
            self.optimizers().step()
        n = batch["items"].numel()
        self._samples += n
        self._loss_sum = self._loss_sum + loss.detach() * n
        if log_step:
            # not on the progress bar: Lightning would turn its cached value into a number after
            # every later batch, a device synchronisation per step on a GPU
            self.log("train/loss_step", loss, on_step=True, on_epoch=False)
        return loss

    def on_train_start(self) -> None:
        self._log_every = self.trainer.log_every_n_steps  # 0: never written

    def on_train_epoch_start(self) -> None:
        self._samples = 0
        self._loss_sum = 0.0
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self.train_seconds += seconds
        self.train_samples += self._samples
        self.log("train/samples_per_s", self._samples / max(seconds, 1e-9), prog_bar=True)
        if self._samples:
            # the mean loss per training sample of the epoch; every process of a DDP run trains
            # the same number of equal batches, so the mean of their means (sync_dist) is exact
            self.log("train/loss", self._loss_sum / self._samples, prog_bar=True, sync_dist=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_metrics.update(score_candidates(self.net, batch["users"], batch["items"]))

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        shown = ("hr@10", "ndcg@10")  # on the progress bar; the rest only in the logs
        self.log_dict({f"val/{k}": v for k, v in values.items() if k in shown}, prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in values.items() if k not in shown})
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        users, items = batch["users"], batch["items"]
        self.test_metrics.update(score_candidates(self.net, users, items))
        if self.full_ranking and "seen_rows" in batch:
            self._full_ranked = True
            rows = batch.get("full_rows")  # data.full_ranking_users: the batch's sampled users
            if rows is not None:
                users, items = users[rows], items[rows]
            if len(users):
                self.test_full_metrics.update(ranks=full_ranks(
                    self.net, users, items[:, 0], batch["seen_rows"], batch["seen_items"],
                    int(batch["num_items"]), self.full_ranking_cells))

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()
        if self._full_ranked:
            self.log_dict({f"test_full/{k}": v for k, v in self.test_full_metrics.compute().items()})
        self.test_full_metrics.reset()
        self._full_ranked = False

    def configure_optimizers(self) -> Any:
        if not self.automatic_optimization:
            return None
        params = [p for p in self.parameters() if p.requires_grad]
        if self.sparse_embeddings:
            opt = self._sparse_optimizer(params)
        else:
            opt = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return opt
        scheduler = self.scheduler_factory(optimizer=opt)
        config = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if scheduler.mode != "max":
                raise ConfigError(f"model.scheduler: ReduceLROnPlateau watches {PLATEAU_MONITOR}, which "
                                  f"rises as the model improves; set its mode: max (got {scheduler.mode!r})")
            config["monitor"] = PLATEAU_MONITOR
        return {"optimizer": opt, "lr_scheduler": config}

    def _sparse_optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        """The configured optimizer for embedding tables with sparse gradients: Adam's settings
        go to `SparseRowsAdam`; plain SGD takes sparse gradients itself; others are refused.
        (DDP and gradient clipping are refused earlier, from the config: `run.check_trainer`.)"""
        factory = self.optimizer_factory
        func, keywords = getattr(factory, "func", factory), dict(getattr(factory, "keywords", {}))
        if func is torch.optim.Adam:
            from flixrec.optim import SparseRowsAdam

            if keywords.pop("weight_decay", 0):
                raise ConfigError("model.sparse_embeddings=true does not support model.optimizer."
                                  "weight_decay; use model.l2 (L2 on the rows a batch draws)")
            unknown = sorted(set(keywords) - {"lr", "betas", "eps", "fused"})
            if unknown:
                raise ConfigError(f"model.sparse_embeddings=true takes Adam's lr, betas, eps and fused, "
                                  f"not model.optimizer.{', model.optimizer.'.join(unknown)}")
            sparse = [m.weight for m in self.net.modules()
                      if isinstance(m, nn.Embedding) and m.weight.requires_grad]
            return SparseRowsAdam(params, sparse, **keywords)
        if func is torch.optim.SGD and not keywords.get("momentum") and not keywords.get("weight_decay"):
            # fused SGD takes no sparse gradients; plain SGD does
            return torch.optim.SGD(params, **{k: v for k, v in keywords.items() if k != "fused"})
        raise ConfigError(f"model.sparse_embeddings=true works with torch.optim.Adam or plain "
                          f"torch.optim.SGD, not {getattr(func, '__name__', func)} {keywords}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        config = self.run_config
        rebuild = getattr(self.net, "rebuild_config", None)
        if config is not None and rebuild is not None:
            # a net built from other files (neumf_pretrained) is stored as the plain
            # architecture, so evaluate.py rebuilds it from this checkpoint alone
            config = copy.deepcopy(config)
            checkpoint["flixrec_built_from"] = config["model"]["net"]
            config["model"]["net"] = rebuild
        checkpoint["flixrec_config"] = config
        checkpoint["flixrec_train"] = {"seconds": self.train_seconds, "samples": self.train_samples}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        stored = ((checkpoint.get("flixrec_config") or {}).get("model") or {}).get("sparse_embeddings", False)
        if checkpoint.get("optimizer_states") and bool(stored) != self.sparse_embeddings:
            raise ConfigError(f"the checkpoint was trained with model.sparse_embeddings={str(bool(stored)).lower()}, "
                              f"a different optimizer state; resume it with the same setting")
        self.run_config = checkpoint.get("flixrec_config")
        state = checkpoint.get("flixrec_train", {})
        self.train_seconds = state.get("seconds", 0.0)
        self.train_samples = state.get("samples", 0)
