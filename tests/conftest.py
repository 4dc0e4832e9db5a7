"""Shared fixtures: the real Hydra configs composed for fast runs in temporary directories."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def shared_data() -> Path:
    """The real data folder that .ci/run points FLIXREC_SHARED_DATA at; skips when absent."""
    path = os.environ.get("FLIXREC_SHARED_DATA")
    if not path or not Path(path).is_dir():
        pytest.skip("FLIXREC_SHARED_DATA not set: the real data files are not available here")
    return Path(path)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One generated-data folder for the whole session, so tiny data is generated once."""
    return tmp_path_factory.mktemp("data")


def compose_cfg(config_name: str, overrides: list[str], out_dir: Path, data_dir: Path) -> DictConfig:
    """Compose conf/<config_name>.yaml with test-speed defaults and temp paths."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.data_dir = str(data_dir)
        cfg.paths.log_dir = str(out_dir.parent)
        cfg.paths.output_dir = str(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return cfg


@pytest.fixture
def make_cfg(tmp_path, data_dir):
    """make_cfg(overrides, config_name="train") -> a composed config writing under tmp_path."""

    def make(overrides: list[str] = (), config_name: str = "train", run: str = "run") -> DictConfig:
        base = ["data=tiny", "logger=none", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"] \
            if config_name == "train" else []
        return compose_cfg(config_name, base + list(overrides), tmp_path / run, data_dir)

    return make


def attach_training_trainer(dm, epoch: int = 0) -> SimpleNamespace:
    """Give a datamodule a stand-in trainer holding only what its batch hooks ask of one while
    training (the training flag, epoch, rank and world size), so they run without Lightning;
    set `.current_epoch` on the returned object to move to another epoch."""
    dm.trainer = SimpleNamespace(training=True, current_epoch=epoch, global_rank=0, world_size=1)
    return dm.trainer
