"""Lightning plugins and callbacks of flixrec runs."""

from __future__ import annotations

import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, WeightAveraging
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.trainer.states import TrainerFn

from flixrec.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temp file and renamed into place, so a process killed while
    saving leaves the previous checkpoint intact and never a truncated one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path,
                        storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


class EMAWeights(WeightAveraging):
    """An exponential moving average of the weights (Lightning's WeightAveraging with the EMA
    of `torch.optim.swa_utils`), updated after every training step.

    Validation during fitting scores the averaged weights, so the best epoch is chosen on
    them, and checkpoints store them as the model's `state_dict` (the raw weights ride along
    for resuming). Outside fitting (validating or testing a checkpoint after `fit`, or
    `evaluate.py`), the checkpoint's averaged weights are what runs. Lightning's callback would
    instead restore the raw weights into the model there and test those.

    Args:
        decay: weight of the old average at each step (0.999: roughly the last 1,000 steps),
            reached after a warm-up: step n uses min(decay, (1 + n) / (10 + n)).
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay {decay} must lie strictly between 0 and 1")
        super().__init__(multi_avg_fn=self._ema)
        self.decay = decay

    @torch.no_grad()
    def _ema(self, averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        # warm-up: the decay grows from 0.1 to `decay` over the first steps, so a short run (few
        # steps per epoch) does not validate weights dominated by the initialisation
        n = int(num_averaged)
        decay = min(self.decay, (1 + n) / (10 + n))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
        else:  # integer buffers: a rounded average
            for a, c in zip(averaged, current):
                a.copy_(a * decay + c * (1.0 - decay))

    @staticmethod
    def _fitting(trainer) -> bool:
        return trainer.state.fn == TrainerFn.FITTING

    def on_fit_start(self, trainer, pl_module) -> None:
        # Lightning builds the average in `setup`, before the model moves to its device
        if self._average_model is not None:
            self._average_model.to(pl_module.device)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._fitting(trainer):
            super().on_validation_epoch_end(trainer, pl_module)

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if self._fitting(trainer):  # resuming: both the average and the raw weights return
            super().on_load_checkpoint(trainer, pl_module, checkpoint)


class TrainThreads(pl.Callback):
    """PyTorch's intra-op CPU threads while fitting (training and validation), restored when
    the fit ends, so data preparation and the test keep every core (top-level `train_threads`).

    On a small CPU the ops of a training step are small (a batch of 1,024 positives is a few
    hundred thousand numbers per op), and waking the other threads for each of them costs more
    than it saves (with the sleeping waits flixrec sets, OMP_WAIT_POLICY=PASSIVE): the default
    `python train.py` trained in 12 s on one thread against 31 s on two, with the same metrics,
    on the project's 2-core machine. Wider models and bigger batches gain from more threads again
    (experiment=neumf_ml100k), so the count is a config value, not a rule."""

    def __init__(self, threads: int) -> None:
        if threads < 1:
            raise ConfigError(f"train_threads={threads}: use 1 or more, or null for PyTorch's default "
                              f"(one thread per core)")
        self.threads = threads
        self._saved: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._saved = torch.get_num_threads()
            torch.set_num_threads(self.threads)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # a failed fit skips teardown; the next job of a sweep must not inherit the count
        self._restore()

    def _restore(self) -> None:
        if self._saved is not None:
            torch.set_num_threads(self._saved)
            self._saved = None


class ResumableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose `last.ckpt` resumes a run as if it had never stopped.

    Three things Lightning (2.6) does not do: it writes `last.ckpt` only in epochs that also
    write a new best, so an interrupted run would resume from its last improvement; this one
    writes it after every epoch. It forgets the best score when a run resumes into another
    directory (and every `python train.py ckpt_path=...` gets a new run directory), so the
    resumed run would choose its best epoch among the new epochs only; this one copies the
    previous best checkpoint into the new directory and keeps its score. And it saves the global
    torch RNG state (dropout draws from it), so resumed epochs draw what the uninterrupted run
    would have drawn.
    """

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missed(trainer)

    def _save_last_if_missed(self, trainer) -> None:
        # skipped when this step was already saved (a new best brings last.ckpt along)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["torch_rng_state"] = torch.get_rng_state()
        if torch.cuda.is_initialized():
            state["cuda_rng_states"] = torch.cuda.get_rng_state_all()
        return state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Lightning restores callbacks (next: load_state_dict) for validate and test with a
        # ckpt_path as well; only a resumed fit continues the run
        self._resuming_fit = trainer.state.fn == TrainerFn.FITTING

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        rng, cuda = state.pop("torch_rng_state", None), state.pop("cuda_rng_states", None)
        if getattr(self, "_resuming_fit", False):
            self._resuming_fit = False
            if rng is not None:
                torch.set_rng_state(rng)
            if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            old_dir = state.get("dirpath")
            if old_dir and self.dirpath and Path(old_dir).resolve() != Path(self.dirpath).resolve():
                state = self._carry_over(state)
        super().load_state_dict(state)

    def _carry_over(self, state: dict[str, Any]) -> dict[str, Any]:
        """`state` with its best checkpoints copied into this run's directory; unchanged (so
        the best-so-far starts afresh, with Lightning's warning) when one of them is gone."""
        best = dict(state.get("best_k_models") or {})
        missing = [p for p in best if not Path(p).is_file()]
        if not best or missing:
            warnings.warn(f"resuming into {self.dirpath}: the previous best checkpoint(s) "
                          f"{missing or state.get('best_model_path')} are gone, so the best epoch "
                          f"is chosen among the resumed epochs only")
            return state
        new_dir = Path(self.dirpath)
        new_dir.mkdir(parents=True, exist_ok=True)
        moved = {}
        for path in best:
            target = new_dir / Path(path).name
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.copyfile(path, tmp)
            os.replace(tmp, target)
            moved[path] = str(target)
        return {**state, "dirpath": self.dirpath, "last_model_path": "",
                "best_k_models": {moved[p]: score for p, score in best.items()},
                "best_model_path": moved.get(state.get("best_model_path"), ""),
                "kth_best_model_path": moved.get(state.get("kth_best_model_path"), "")}


class SweepReport(Callback):
    """Hydra callback: at the end of a multirun, name each failed job and its error, and exit
    non-zero if any failed (the other jobs' results stay in their directories)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        failed = sorted(sweep_dir.glob("**/FAILED"))
        total = len(list(sweep_dir.glob("**/.hydra/overrides.yaml")))
        if not failed:
            print(f"sweep finished: {total} jobs in {sweep_dir}", flush=True)
            return
        print(f"sweep finished with {len(failed)} failed job(s) of {total} in {sweep_dir}:",
              file=sys.stderr, flush=True)
        for path in failed:
            overrides = path.parent / ".hydra" / "overrides.yaml"
            what = " ".join(OmegaConf.load(overrides)) if overrides.exists() else ""
            print(f"  {path.parent.name} [{what}]: {path.read_text().strip()}", file=sys.stderr, flush=True)
        sys.exit(1)
