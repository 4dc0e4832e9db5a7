"""Adam for nets whose embedding tables have sparse gradients (`model.sparse_embeddings`).

With dense gradients every training step zero-fills a gradient as large as each embedding
table and Adam then updates every row: at Netflix size (480k users) that is most of a CPU step
(bench/RESULTS.md). With sparse gradients a step costs what its batch draws: torch's SparseAdam
updates only the rows a batch drew ("lazy" Adam: a row's moments follow its own draws and an
undrawn row does not move), and the dense layers keep torch's Adam.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import Tensor


class SparseRowsAdam(torch.optim.Optimizer):
    """torch.optim.SparseAdam for `sparse_params` and torch.optim.Adam for the other `params`,
    as one optimizer with one param group, so Lightning's automatic optimisation, checkpoints,
    LR schedulers and the LR monitor treat it like any other: the group's learning rate is
    handed to both before each step. Keyword arguments as torch.optim.Adam's; `fused` applies
    to the dense part; weight decay is not supported (use `model.l2`)."""

    def __init__(self, params: Iterable[Tensor], sparse_params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 fused: bool | None = None) -> None:
        if weight_decay:
            raise ValueError("weight decay is not supported with sparse embedding gradients; "
                             "use model.l2 (L2 on the rows a batch draws)")
        params = list(params)
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        sparse_ids = {id(p) for p in sparse_params}
        dense = [p for p in params if id(p) not in sparse_ids]
        sparse = [p for p in params if id(p) in sparse_ids]
        self.parts: list[torch.optim.Optimizer] = []
        if dense:
            self.parts.append(torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps, fused=fused))
        if sparse:
            self.parts.append(torch.optim.SparseAdam(sparse, lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        lr = self.param_groups[0]["lr"]
        for part in self.parts:
            for group in part.param_groups:
                group["lr"] = lr
            part.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts],
                "lr": self.param_groups[0]["lr"], "initial_lr": self.param_groups[0].get("initial_lr")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict["parts"]
        if len(parts) != len(self.parts):
            raise ValueError(f"optimizer state of {len(parts)} parts for an optimizer of {len(self.parts)}")
        for part, state in zip(self.parts, parts):
            part.load_state_dict(state)
        self.param_groups[0]["lr"] = state_dict["lr"]
        if state_dict.get("initial_lr") is not None:
            self.param_groups[0]["initial_lr"] = state_dict["initial_lr"]
