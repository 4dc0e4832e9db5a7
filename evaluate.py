"""Test a checkpoint (`python evaluate.py ckpt_path=RUN/checkpoints/best.ckpt`) or compare runs
(`python evaluate.py compare=outputs/train`)."""

import hydra
from omegaconf import DictConfig

from flixrec.run import evaluate, guarded, skip_exit_collections


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    guarded(evaluate, cfg)


if __name__ == "__main__":
    main()
    skip_exit_collections()  # outputs are written and closed by now
