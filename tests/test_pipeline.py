"""End-to-end behaviour: every model config trains, checkpoints and evaluates reproducibly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning.loggers import Logger

from flixrec.run import build, evaluate, train
from tests.conftest import CONF, ROOT, attach_training_trainer

# every model config but neumf_pretrained, which starts from trained GMF and MLP checkpoints:
# tests/test_models.py trains those and tests it end to end (its training and evaluate.py)
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "neumf_pretrained")


def read_metrics(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_trains_and_evaluates(model, make_cfg):
    cfg = make_cfg([f"model={model}"], run=f"train-{model}")
    best = train(cfg)
    m = read_metrics(cfg)
    assert m["model"] == model and m["data"] == "tiny" and m["seed"] == cfg.seed
    for block in ("val", "test"):
        assert 0.0 <= m[block]["hr@10"] <= 1.0 and 0.0 <= m[block]["ndcg@10"] <= m[block]["hr@10"]
    assert best == pytest.approx(m["val"]["hr@10"], abs=1e-6)
    assert {"ratings", "users", "items", "eval_users"} <= m["data_stats"].keys()
    assert m["train_samples_per_s"] > 0 and m["train_seconds"] > 0
    assert m["baseline_pop"]["test"]["hr@10"] >= 0
    run = Path(cfg.paths.output_dir)
    assert (run / m["checkpoint"]).is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    eval_cfg = make_cfg([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"], config_name="evaluate",
                        run=f"eval-{model}")
    evaluate(eval_cfg)
    evaluated = read_metrics(eval_cfg)
    assert evaluated["test"] == m["test"]
    assert evaluated["test_full"] == m["test_full"]  # full ranking, every unrated movie a candidate
    assert evaluated["oracle"] == m["oracle"]        # tiny data is synthetic: the ceiling is known


def test_prepare_only_writes_data_stats(make_cfg):
    cfg = make_cfg(["train=false", "test=false"])
    assert train(cfg) is None
    m = read_metrics(cfg)
    assert m["data_stats"]["eval_users"] > 0 and m["prepare_seconds"] >= 0
    assert "test" not in m and not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_candidates_do_not_depend_on_model_or_batch_size(make_cfg):
    dm_a, _ = build(make_cfg(["model=gmf", "data.batch_size=64"], run="a"))
    dm_b, _ = build(make_cfg(["model=mlp", "data.batch_size=512"], run="b"))
    assert torch.equal(dm_a.test_items, dm_b.test_items)
    assert torch.equal(dm_a.val_items, dm_b.val_items)
    dm_c, _ = build(make_cfg(["seed=7"], run="c"))
    assert not torch.equal(dm_a.test_items, dm_c.test_items)


def test_training_batches_carry_negatives_of_each_positives_user(make_cfg):
    dm = instantiate(make_cfg([]).data, _convert_="partial")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))

    attach_training_trainer(dm)
    out = dm.on_after_batch_transfer(batch, 0)
    B, n = len(batch["users"]), dm.num_negatives
    assert torch.equal(out["users"], batch["users"]) and out["items"].shape == (B, 1 + n)
    assert torch.equal(out["items"][:, 0], batch["items"])  # column 0: the positive
    assert dm.train_seen(out["users"], out["items"][:, 0]).all()
    assert not dm.train_seen(out["users"][:, None], out["items"][:, 1:]).any()
    # a resumed epoch draws the same negatives (the stream is keyed by seed and epoch)
    dm._neg_state = None
    again = dm.on_after_batch_transfer(batch, 0)
    assert torch.equal(out["items"], again["items"])


@pytest.mark.parametrize("exclude", ["train", "all"])
def test_training_negatives_may_be_held_out_movies_only_when_excluding_training(make_cfg, exclude):
    """Training negatives avoid the movies rated in training; by default they may be a user's
    held-out (validation or test) movie, which the model must not know about. With
    data.negatives_exclude=all (the notebook's leaky rule) they never are."""
    from flixrec.data.sampling import is_member, pair_keys

    dm = instantiate(make_cfg([f"data.negatives_exclude={exclude}"]).data, _convert_="partial")
    dm.setup("fit")

    attach_training_trainer(dm)
    held_out = pair_keys(dm.eval_users.repeat(2), torch.cat([dm.val_items[:, 0], dm.test_items[:, 0]]),
                         dm.num_items)
    hits = 0
    for batch in dm.train_dataloader():
        out = dm.on_after_batch_transfer(batch, 0)
        negs, users = out["items"][:, 1:], out["users"][:, None]
        assert not dm.train_seen(users, negs).any()
        hits += int(is_member(held_out, users, negs, dm.num_items).sum())
    if exclude == "train":
        assert hits > 0  # an epoch of tiny data draws thousands of negatives over few movies
    else:
        assert hits == 0


def test_train_py_end_to_end(tmp_path, data_dir):
    run = tmp_path / "cli-run"
    cmd = [sys.executable, "train.py", "data=tiny", "model=gmf", "trainer.max_epochs=2",
           f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["model"] == "gmf" and "hr@10" in m["test"]
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "run directory" in proc.stdout

    ev = tmp_path / "cli-eval"
    proc = subprocess.run([sys.executable, "evaluate.py", f"ckpt_path={run / m['checkpoint']}",
                           f"hydra.run.dir={ev}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((ev / "metrics.json").read_text())["test"] == m["test"]


def test_bad_config_value_exits_nonzero_with_message(tmp_path, data_dir):
    proc = subprocess.run([sys.executable, "train.py", "data=tiny", "data.num_negatives=0",
                           f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'bad'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "data.num_negatives=0" in proc.stderr and "Traceback" not in proc.stderr


def write_kaggle_files(root: Path, num_users: int = 60, num_movies: int = 80, seed: int = 3) -> int:
    """Hand-rolled Kaggle-layout files (not the project's generator): CRLF line endings, sparse
    customer ids, same-day ratings, a latin-1 title with a comma. Returns the rating count."""
    import random

    rng = random.Random(seed)
    customers = rng.sample(range(1, 2_649_430), num_users)
    blocks, count = [], 0
    for movie in range(1, num_movies + 1):
        raters = rng.sample(customers, rng.randint(5, 40))
        lines = [f"{movie}:"] + [f"{c},{rng.randint(1, 5)},2005-0{rng.randint(1, 9)}-1{rng.randint(0, 2)}"
                                 for c in raters]
        count += len(raters)
        blocks.append("\r\n".join(lines) + "\r\n")
    root.mkdir(parents=True, exist_ok=True)
    half = len(blocks) // 2
    (root / "combined_data_1.txt").write_bytes("".join(blocks[:half]).encode())
    (root / "combined_data_2.txt").write_bytes("".join(blocks[half:]).encode())
    titles = [f"{m},{1990 + m % 15},Movie {m}" for m in range(1, num_movies + 1)]
    titles[0] = "1,NULL,Caf\xe9, the Movie"
    (root / "movie_titles.csv").write_bytes("\r\n".join(titles).encode("latin-1"))
    return count


def test_train_on_netflix_files_the_generator_did_not_write(tmp_path, make_cfg):
    root = tmp_path / "netflix"
    count = write_kaggle_files(root)
    cfg = make_cfg(["data=netflix", f"data.root={root}", "data.num_test_negatives=20",
                    "data.batch_size=128"])
    train(cfg)
    m = read_metrics(cfg)
    assert m["data"] == "netflix" and m["data_stats"]["ratings"] == count
    assert m["data_stats"]["users"] == 60 and m["data_stats"]["items"] == 80
    assert 0.0 <= m["test"]["hr@10"] <= 1.0


def test_ema_weights_are_validated_checkpointed_and_tested(make_cfg):
    """callbacks=ema: the epoch is chosen on the averaged weights, and those weights (not the
    raw ones) are what train.py tests and what evaluate.py reloads."""
    cfg = make_cfg(["model=gmf", "callbacks=[ema,early_stopping]", "callbacks.ema.decay=0.9",
                    "trainer.max_epochs=3"], run="ema")
    train(cfg)
    m = read_metrics(cfg)
    run = Path(cfg.paths.output_dir)
    ckpt = torch.load(run / m["checkpoint"], map_location="cpu", weights_only=False)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]
    assert not torch.equal(averaged["net.user_emb.weight"], raw["net.user_emb.weight"])
    scores = [s["best_model_score"] for s in ckpt["callbacks"].values() if "best_model_score" in s]
    assert scores and float(scores[0]) == pytest.approx(m["val"]["hr@10"], abs=1e-6)

    eval_cfg = make_cfg([f"ckpt_path={run / m['checkpoint']}"], config_name="evaluate", run="ema-eval")
    evaluate(eval_cfg)
    assert read_metrics(eval_cfg)["test"] == m["test"]


def test_recency_weights_hand_example():
    from flixrec.data.datamodule import recency_weights

    # user 0 rated rows 1, 2, 0 in time order (keys 1, 3, 5); user 1 rows 3, 4 (keys 2, 9)
    w = recency_weights(torch.tensor([0, 0, 0, 1, 1]), torch.tensor([5, 1, 3, 2, 9]), 2, half_life=1.0)
    raw = torch.tensor([1.0, 0.25, 0.5, 0.5, 1.0])  # 0.5 ** (later ratings of the same user)
    torch.testing.assert_close(w, raw / raw.mean())


def test_recency_half_life_weights_each_users_latest_training_rating_most(make_cfg):
    dm = instantiate(make_cfg(["data.recency_half_life=5"]).data, _convert_="partial")
    dm.setup("fit")
    w, users = dm.train_weights, dm.train_users
    assert w.shape == users.shape and torch.isclose(w.mean(), torch.tensor(1.0))
    # each user's heaviest rating weighs the same (their latest, r = 0): the per-user maximum
    top = torch.zeros(dm.num_users).scatter_reduce(0, users, w, "amax", include_self=False)
    assert torch.allclose(top[users.unique()], top[users.unique()].max())
    # batches carry one weight per positive, through negative sampling
    batch = next(iter(dm.train_dataloader()))

    attach_training_trainer(dm)
    out = dm.on_after_batch_transfer(batch, 0)
    assert out["weights"].shape == out["users"].shape and torch.equal(out["weights"], batch["weights"])
    plain = instantiate(make_cfg([]).data, _convert_="partial")
    plain.setup("fit")
    assert plain.train_weights is None and "weights" not in next(iter(plain.train_dataloader()))


def test_train_threads_apply_while_fitting_and_are_restored(make_cfg):
    import pytorch_lightning as pl

    class Seen(pl.Callback):
        threads: set = set()

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            Seen.threads.add(torch.get_num_threads())

    before = torch.get_num_threads()
    cfg = make_cfg(["model=gmf", "trainer.max_epochs=1", "train_threads=1", "test=false"])
    from flixrec.run import build_trainer
    trainer = build_trainer(cfg)
    trainer.callbacks.append(Seen())
    dm, model = build(cfg)
    trainer.fit(model, datamodule=dm)
    assert Seen.threads == {1}
    assert torch.get_num_threads() == before   # data preparation and the test keep every core
    # a fit that fails restores the count too (the next job of a sweep starts clean)
    class Boom(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            raise FloatingPointError("boom")

    trainer = build_trainer(cfg)
    trainer.callbacks.append(Boom())
    with pytest.raises(FloatingPointError):
        trainer.fit(model, datamodule=dm)
    assert torch.get_num_threads() == before
    from flixrec.errors import ConfigError

    with pytest.raises(ConfigError, match="train_threads=0"):
        build_trainer(make_cfg(["train_threads=0"]))


class MemoryLogger(Logger):
    """Keeps what Lightning writes: (step, metrics) per `log_metrics` call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[int, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.writes.append((step, dict(metrics)))


@pytest.mark.parametrize("model", ["gmf", "pop"])  # pop: manual optimisation, a mock step
def test_step_loss_is_written_every_n_steps_with_that_steps_loss_and_epoch_mean(model, make_cfg):
    """The logger gets `train/loss_step` on every n-th step (trainer.log_every_n_steps), holding
    the loss of the batch just trained, and `train/loss` per epoch: the per-sample mean of the
    epoch's losses (the metric DESIGN.md names, which callbacks can monitor)."""
    import pytorch_lightning as pl

    dm, module = build(make_cfg([f"model={model}", "data.batch_size=256"]))
    losses, sizes, objective = [], [], module.training_loss

    def recorded(batch):
        loss = objective(batch)
        losses.append(float(loss))
        sizes.append(batch["items"].numel())
        return loss

    module.training_loss = recorded
    logger = MemoryLogger()
    trainer = pl.Trainer(max_epochs=1, logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                         limit_val_batches=0, log_every_n_steps=3)
    trainer.fit(module, dm)
    n = len(losses)
    assert n >= 7
    step_writes = [(step, m["train/loss_step"]) for step, m in logger.writes if "train/loss_step" in m]
    assert [s for s, _ in step_writes] == list(range(2, n, 3))  # Lightning's 0-based steps 2, 5, ...
    assert [v for _, v in step_writes] == pytest.approx([losses[s] for s, _ in step_writes], rel=1e-6)
    epoch = [m["train/loss"] for _, m in logger.writes if "train/loss" in m]
    want = sum(loss * size for loss, size in zip(losses, sizes)) / sum(sizes)
    assert epoch == pytest.approx([want], rel=1e-5)
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(want, rel=1e-5)


PLATEAU = "model.scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true,mode:%s,factor:0.5,patience:0}"


def test_plateau_scheduler_halves_the_lr_after_each_epoch_without_a_better_val_hr(make_cfg):
    """model.scheduler=ReduceLROnPlateau (Lightning refuses one without a monitor) watches
    val/hr@10: with patience 0 the learning rate halves after every epoch whose validation
    HR@10 does not beat the best so far, and only then."""
    import pytorch_lightning as pl

    from flixrec.errors import ConfigError
    from flixrec.run import build_trainer

    class Record(pl.Callback):
        def __init__(self):
            self.val, self.lr = [], []

        def on_train_epoch_start(self, trainer, module):
            self.lr.append(trainer.optimizers[0].param_groups[0]["lr"])

        def on_train_epoch_end(self, trainer, module):  # after the epoch's validation
            self.val.append(float(trainer.callback_metrics["val/hr@10"]))

    cfg = make_cfg(["model=gmf", "model.optimizer.lr=0.05", "trainer.max_epochs=8", "test=false",
                    PLATEAU % "max"])
    trainer, record = build_trainer(cfg), Record()
    trainer.callbacks.append(record)
    dm, model = build(cfg)
    trainer.fit(model, datamodule=dm)
    assert len(record.val) == 8 and len(record.lr) == 8
    expected, best = [0.05], -1.0
    for hr in record.val[:-1]:
        expected.append(expected[-1] if hr > best else expected[-1] * 0.5)
        best = max(best, hr)
    assert record.lr == pytest.approx(expected)
    assert min(record.lr) < 0.05   # the run did reach a plateau, so the check above bites
    assert trainer.lr_scheduler_configs[0].scheduler.best == pytest.approx(max(record.val), abs=1e-6)

    with pytest.raises(ConfigError, match="mode: max"):
        model_min = build(make_cfg([PLATEAU % "min"], run="min"))[1]
        model_min.configure_optimizers()
