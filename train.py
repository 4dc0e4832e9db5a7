"""Train a recommender: `python train.py model=neumf data=netflix data.root=DIR trainer=gpu`."""

import hydra
from omegaconf import DictConfig

from flixrec.run import guarded, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(train, cfg)


if __name__ == "__main__":
    main()
