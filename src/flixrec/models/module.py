"""One LightningModule for every net: BCE-with-logits on sampled negatives, ranking metrics."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn.functional import binary_cross_entropy_with_logits

from flixrec.metrics import RankingMetrics


def score_candidates(net: nn.Module, users: Tensor, items: Tensor) -> Tensor:
    """Scores (B, C) float32 of candidate matrix `items` (B, C) for `users` (B,)."""
    flat_users = users[:, None].expand_as(items).reshape(-1)
    return net(flat_users, items.reshape(-1)).float().view_as(items)


class RecModule(pl.LightningModule):
    """Trains `net` on batches {"users", "items", "labels"} and evaluates it on candidate
    batches {"users": (B,), "items": (B, 1+n)} whose column 0 is the held-out item.

    Args:
        net: a module mapping (users, items) to logits.
        optimizer: partial taking `params`, e.g. `partial(torch.optim.Adam, lr=1e-3)`.
        scheduler: optional partial taking `optimizer`, stepped once per epoch.
        name: model name reported in metrics.json.
        ks: cut-offs for HR@k and NDCG@k.
    """

    def __init__(self, net: nn.Module, optimizer: Callable[..., torch.optim.Optimizer],
                 scheduler: Callable[..., Any] | None = None, name: str = "model",
                 ks: Sequence[int] = (5, 10, 20)) -> None:
        super().__init__()
        self.net, self.optimizer_factory, self.scheduler_factory = net, optimizer, scheduler
        self.name = name
        self.val_metrics = RankingMetrics(tuple(ks))
        self.test_metrics = RankingMetrics(tuple(ks))
        self.run_config: dict | None = None  # the resolved run config, stored in checkpoints
        self._samples = 0
        self._epoch_start = 0.0
        self.train_seconds = 0.0
        self.train_samples = 0

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        return self.net(users, items)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self.net(batch["users"], batch["items"])
        loss = binary_cross_entropy_with_logits(logits, batch["labels"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss.item()} at epoch {self.current_epoch}, step "
                f"{self.global_step}: lower model.optimizer.lr or use trainer.precision=32")
        self._samples += len(batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True,
                 batch_size=len(batch["labels"]))
        return loss

    def on_train_epoch_start(self) -> None:
        self._samples = 0
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self) -> None:
        seconds = time.perf_counter() - self._epoch_start
        self.train_seconds += seconds
        self.train_samples += self._samples
        self.log("train/samples_per_s", self._samples / max(seconds, 1e-9), prog_bar=True)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_metrics.update(score_candidates(self.net, batch["users"], batch["items"]))

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        shown = ("hr@10", "ndcg@10")  # on the progress bar; the rest only in the logs
        self.log_dict({f"val/{k}": v for k, v in values.items() if k in shown}, prog_bar=True)
        self.log_dict({f"val/{k}": v for k, v in values.items() if k not in shown})
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.test_metrics.update(score_candidates(self.net, batch["users"], batch["items"]))

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{k}": v for k, v in self.test_metrics.compute().items()})
        self.test_metrics.reset()

    def configure_optimizers(self) -> Any:
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt),
                                                   "interval": "epoch"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["flixrec_config"] = self.run_config
        checkpoint["flixrec_train"] = {"seconds": self.train_seconds, "samples": self.train_samples}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.run_config = checkpoint.get("flixrec_config")
        state = checkpoint.get("flixrec_train", {})
        self.train_seconds = state.get("seconds", 0.0)
        self.train_samples = state.get("samples", 0)
