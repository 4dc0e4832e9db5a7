"""Lightning plugins and callbacks of flixrec runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO


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
