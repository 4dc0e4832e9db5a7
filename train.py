"""Train a recommender: `python train.py model=neumf data=netflix data.root=DIR trainer=gpu`."""

import hydra
from omegaconf import DictConfig

from flixrec.run import guarded, skip_exit_collections, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return guarded(train, cfg)


if __name__ == "__main__":
    main()
    skip_exit_collections()  # outputs are written and closed by now
