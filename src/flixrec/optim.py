"""Adam for nets whose embedding tables have sparse gradients (`model.sparse_embeddings`).

With dense gradients every training step zero-fills a gradient as large as each embedding
table and Adam then updates every row: at Netflix size (480k users) that is most of a CPU step
(bench/RESULTS.md). With sparse gradients a step costs what its batch draws: `LazyAdam` (torch's
SparseAdam update) changes only the rows a batch drew ("lazy" Adam: a row's moments follow its
own draws and an undrawn row does not move), and the dense layers keep torch's Adam.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch
from torch import Tensor


def _closure_loss(closure: Callable[[], Any] | None) -> Any:
    """What an optimizer step's `closure` returns, evaluated with gradients on; None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def _summed_rows(grad: Tensor) -> tuple[Tensor, Tensor]:
    """The distinct rows of a sparse gradient with one sparse dimension (an embedding table's),
    ascending, int64 (R,), and their summed gradients, (R, *row shape) in the gradient's dtype:
    `grad.coalesce()`'s indices and values, without its sort when the table is small next to
    the number of lookups (a bincount of the rows, O(table rows))."""
    if grad.sparse_dim() != 1:
        raise RuntimeError(f"LazyAdam takes gradients of embedding tables (one sparse dimension), "
                           f"not {grad.sparse_dim()}")
    if grad.is_coalesced():
        return grad._indices()[0], grad._values()
    idx, values = grad._indices()[0], grad._values()
    if grad.shape[0] <= 4 * idx.numel():
        drawn = torch.bincount(idx, minlength=grad.shape[0]) > 0
        rows, inverse = drawn.nonzero().squeeze(1), (torch.cumsum(drawn, 0) - 1)[idx]
    else:
        rows, inverse = torch.unique(idx, return_inverse=True)
    return rows, values.new_zeros((len(rows), *values.shape[1:])).index_add_(0, inverse, values)


class LazyAdam(torch.optim.SparseAdam):
    """torch.optim.SparseAdam's update, state and checkpoints, computed with row gathers and
    scatters of the drawn rows instead of sparse-tensor arithmetic (coalesce, `sparse_mask`,
    dense += sparse), which cost most of a sparse training step at Netflix size on the CPU
    (bench/RESULTS.md). The same formulas in the same order; only the gradients of a row drawn
    several times in a batch are summed in another order than coalesce sums them, which can
    change the last bit. On CUDA that sum (`index_add_`) uses atomics, so it is bit-reproducible
    only with `trainer.deterministic=true`. Tables only: gradients with one sparse dimension."""

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("LazyAdam (SparseAdam) does not support dense gradients, "
                                       "please consider Adam instead")
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                rows, grad = _summed_rows(p.grad)
                if group.get("maximize", False):
                    grad = -grad
                if rows.numel() == 0:
                    continue
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                # old <- old + (1 - b) * (new - old), on the drawn rows only
                old = exp_avg.index_select(0, rows)
                avg = grad.sub(old).mul_(1 - beta1).add_(old)
                old = exp_avg_sq.index_select(0, rows)
                avg_sq = grad.pow(2).sub_(old).mul_(1 - beta2).add_(old)
                exp_avg.index_copy_(0, rows, avg)
                exp_avg_sq.index_copy_(0, rows, avg_sq)
                step = state["step"]
                step_size = lr * math.sqrt(1 - beta2 ** step) / (1 - beta1 ** step)
                p.index_add_(0, rows, avg.div_(avg_sq.sqrt_().add_(eps)).mul_(-step_size))
        return loss


class SparseRowsAdam(torch.optim.Optimizer):
    """`LazyAdam` (torch.optim.SparseAdam's update) for `sparse_params` and torch.optim.Adam for
    the other `params`, as one optimizer with one param group, so Lightning's automatic
    optimisation, checkpoints, LR schedulers and the LR monitor treat it like any other: the
    group's learning rate, betas and eps are handed to both before each step. Keyword arguments
    as torch.optim.Adam's; `fused` applies to the dense part; there is no weight decay (use
    `model.l2`: L2 on the rows a batch draws)."""

    def __init__(self, params: Iterable[Tensor], sparse_params: Iterable[Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 fused: bool | None = None) -> None:
        params = list(params)
        self.parts = None  # built below; until then add_param_group is the base class's
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})
        sparse_ids = {id(p) for p in sparse_params}
        dense = [p for p in params if id(p) not in sparse_ids]
        sparse = [p for p in params if id(p) in sparse_ids]
        parts: list[torch.optim.Optimizer] = []
        if dense:
            parts.append(torch.optim.Adam(dense, lr=lr, betas=betas, eps=eps, fused=fused))
        if sparse:
            parts.append(LazyAdam(sparse, lr=lr, betas=betas, eps=eps))
        self.parts = parts

    # the parts hold the per-parameter state; this view lets Lightning move it between devices
    # (it updates each parameter's state dict in place)
    @property
    def state(self) -> dict:
        return {p: s for part in getattr(self, "parts", None) or () for p, s in part.state.items()}

    @state.setter
    def state(self, value: Any) -> None:  # torch.optim.Optimizer.__init__ assigns an empty one
        pass

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "parts", None) is not None:
            raise RuntimeError("SparseRowsAdam takes all its parameters when it is built")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = _closure_loss(closure)
        group = self.param_groups[0]  # schedulers may change lr and betas
        for part in self.parts:
            for part_group in part.param_groups:
                part_group.update(lr=group["lr"], betas=group["betas"], eps=group["eps"])
            part.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        group = self.param_groups[0]
        return {"parts": [part.state_dict() for part in self.parts], "lr": group["lr"],
                "betas": group["betas"], "eps": group["eps"], "initial_lr": group.get("initial_lr")}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "parts" not in state_dict:
            raise ValueError("not a SparseRowsAdam state (was it saved without model.sparse_embeddings?)")
        parts = state_dict["parts"]
        if len(parts) != len(self.parts):
            raise ValueError(f"optimizer state of {len(parts)} parts for an optimizer of {len(self.parts)}")
        for part, state in zip(self.parts, parts):
            part.load_state_dict(state)
        self.param_groups[0]["lr"] = state_dict["lr"]
        self.param_groups[0].update({k: v for k, v in state_dict.items() if k in ("betas", "eps")})
        if state_dict.get("initial_lr") is not None:
            self.param_groups[0]["initial_lr"] = state_dict["initial_lr"]
