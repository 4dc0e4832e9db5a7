"""Fault injection: crashes mid-write, parallel jobs, training faults, bad configuration, and
determinism across runs and resumes.

Crash tests start a child Python process that patches the one write it is about to make: the
patched write puts the first half of the bytes into the open file, creates a `ready` file and
sleeps. The parent waits for `ready` and sends SIGKILL, so the kill always lands while that file
is half written. Each test then checks that a later run neither trusts nor trips over the
leftovers.
"""

from __future__ import annotations

import json
import logging
import re
import runpy
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from torch import Tensor

from flixrec.data import ratings
from flixrec.data.netflix import NetflixReader
from flixrec.errors import ConfigError
from flixrec.models.module import RecModule
from flixrec.models.nets import GMF
from flixrec.report import collect_runs
from flixrec.run import build, guarded, train
from tests.conftest import ROOT, attach_training_trainer

# ----------------------------------------------------------------------------------------------
# helpers


def start_child(script: str, *args: object, log: Path) -> subprocess.Popen:
    """`python -c script args...` in the repository root (so `tests` imports), output to `log`
    (a file, not a pipe, so a chatty child never blocks before reaching its kill point)."""
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def kill_when_ready(proc: subprocess.Popen, ready: Path, log: Path, timeout: float = 180) -> None:
    """SIGKILL `proc` as soon as it creates `ready`; fail if it exits or hangs before that."""
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"the child exited ({proc.returncode}) before its kill point:\n"
                        f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the child did not reach its kill point in {timeout} s")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


# Child prelude: argv[1] is the `ready` file; `stall` is the half-write followed by the wait.
STALL = """
    import sys, time
    from pathlib import Path

    READY = Path(sys.argv[1])

    def stall(f, data):
        f.write(data[: len(data) // 2])
        f.flush()
        READY.touch()
        time.sleep(600)
"""

# Child that trains: argv[2] overrides (JSON list), argv[3] run directory, argv[4] data_dir.
TRAIN = STALL + """
    import json
    from tests.conftest import compose_cfg
    from flixrec.run import train

    def run():
        train(compose_cfg("train", json.loads(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])))
"""

FAST = ["data=tiny", "logger=none", "trainer.enable_progress_bar=false", "model=gmf"]


def write_netflix(root: Path) -> Path:
    """A small Kaggle-layout ratings file: 40 movies, 30 of 200 customers each."""
    rng = np.random.default_rng(0)
    lines = []
    for movie in range(1, 41):
        lines.append(f"{movie}:")
        for customer in rng.choice(np.arange(1, 201), 30, replace=False):
            lines.append(f"{customer},{rng.integers(1, 6)},2005-{rng.integers(1, 13):02d}-"
                         f"{rng.integers(1, 29):02d}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "combined_data_1.txt").write_text("\n".join(lines) + "\n")
    return root


def count_parses(monkeypatch) -> list[int]:
    """Patch NetflixReader.parse (keeping the class, so the cache key is unchanged) to count."""
    calls: list[int] = []
    parse = NetflixReader.parse

    def counted(self, root):
        calls.append(1)
        return parse(self, root)

    monkeypatch.setattr(NetflixReader, "parse", counted)
    return calls


def assert_same_table(a: ratings.Ratings, b: ratings.Ratings) -> None:
    for name in ratings.COLUMNS + ("user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def read_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def expect_user_error(task, cfg, capsys) -> str:
    """Run `task` as train.py does; assert exit 1 and a traceback-free message; return it."""
    with pytest.raises(SystemExit) as exc:
        guarded(task, cfg)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "flixrec: error:" in err and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------------------------------------
# 1. crash safety


CACHE_CHILD = STALL + """
    from flixrec.data import ratings
    from flixrec.data.netflix import NetflixReader

    def write_text(path, text):  # meta.json goes last: its presence marks a complete cache
        with open(path, "w") as f:
            stall(f, text) if path.name == "meta.json" else f.write(text)

    ratings._write_text = write_text
    ratings.read_cached(NetflixReader(), sys.argv[2], sys.argv[3])
"""


def test_cache_killed_mid_write_is_not_trusted_and_is_rebuilt(tmp_path, monkeypatch):
    root, cache = write_netflix(tmp_path / "raw"), tmp_path / "cache"
    log, ready = tmp_path / "child.log", tmp_path / "ready"
    kill_when_ready(start_child(CACHE_CHILD, ready, root, cache, log=log), ready, log)
    # the kill left a half-written temp directory, and nothing where later runs look
    assert list(cache.glob(".netflix.tmp-*")), "the kill did not land inside the cache write"
    assert not (cache / "netflix").exists()

    expected = NetflixReader().parse(root)
    parses = count_parses(monkeypatch)
    table = ratings.read_cached(NetflixReader(), root, cache)
    assert len(parses) == 1
    assert_same_table(table, expected)
    assert not list(cache.glob(".netflix.tmp-*")), "the killed writer's leftovers were not removed"
    ratings.read_cached(NetflixReader(), root, cache)
    assert len(parses) == 1  # the rebuilt cache is trusted


@pytest.mark.parametrize("damage", ["truncated column", "garbled meta.json"])
def test_damaged_cache_is_rebuilt_with_a_warning(damage, tmp_path, monkeypatch, caplog):
    root, cache = write_netflix(tmp_path / "raw"), tmp_path / "cache"
    good = ratings.read_cached(NetflixReader(), root, cache)
    if damage == "truncated column":
        column = cache / "netflix" / "items.npy"
        column.write_bytes(column.read_bytes()[:100])
    else:
        (cache / "netflix" / "meta.json").write_text('{"key": ')
    parses = count_parses(monkeypatch)
    with caplog.at_level(logging.WARNING):
        table = ratings.read_cached(NetflixReader(), root, cache)
    assert len(parses) == 1
    assert_same_table(table, good)
    assert any("could not be loaded" in r.getMessage() for r in caplog.records)


CHECKPOINT_CHILD = TRAIN + """
    import io, torch
    from lightning_fabric.plugins.io import torch_io

    save = torch_io._atomic_save

    def atomic_save(checkpoint, path):  # where Lightning writes the bytes of a checkpoint file
        if checkpoint["epoch"] >= 1 and "last" in Path(path).name:
            buffer = io.BytesIO()
            torch.save(checkpoint, buffer)
            with open(path, "wb") as f:
                stall(f, buffer.getvalue())
        save(checkpoint, path)

    torch_io._atomic_save = atomic_save
    run()
"""


def test_checkpoint_killed_mid_write_keeps_the_previous_one(tmp_path, data_dir, make_cfg):
    run, log, ready = tmp_path / "killed", tmp_path / "child.log", tmp_path / "ready"
    overrides = FAST + ["trainer.max_epochs=3"]
    proc = start_child(CHECKPOINT_CHILD, ready, json.dumps(overrides), run, data_dir, log=log)
    kill_when_ready(proc, ready, log)
    ckpts = run / "checkpoints"
    # every file named *.ckpt is whole; last.ckpt is still the one of the first epoch
    for path in ckpts.glob("*.ckpt"):
        torch.load(path, map_location="cpu", weights_only=False)
    last = ckpts / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["epoch"] == 0
    assert list(ckpts.glob(".last.ckpt.tmp-*")), "the kill did not land inside the checkpoint write"
    # and the run resumes from it
    cfg = make_cfg(["model=gmf", f"ckpt_path={last}"], run="resumed")
    train(cfg)
    assert read_metrics(Path(cfg.paths.output_dir))["test"]["hr@10"] >= 0


METRICS_CHILD = TRAIN + """
    import json as json_module

    dump = json_module.dump

    def json_dump(obj, f, **kwargs):
        if "metrics.json" in str(getattr(f, "name", "")):
            stall(f, json_module.dumps(obj, **kwargs))
        dump(obj, f, **kwargs)

    json_module.dump = json_dump
    run()
"""


def test_metrics_killed_mid_write_leave_no_metrics_file(tmp_path, data_dir):
    run, log, ready = tmp_path / "runs" / "killed", tmp_path / "child.log", tmp_path / "ready"
    proc = start_child(METRICS_CHILD, ready, json.dumps(FAST + ["trainer.max_epochs=1"]), run,
                       data_dir, log=log)
    kill_when_ready(proc, ready, log)
    assert list(run.glob(".metrics.json.tmp-*")), "the kill did not land inside the metrics write"
    assert not (run / "metrics.json").exists()
    with pytest.raises(ConfigError, match="no training run's metrics.json"):
        collect_runs(tmp_path / "runs")  # `evaluate.py compare=` finds nothing to trust


# ----------------------------------------------------------------------------------------------
# 2. concurrency


PARALLEL_CHILD = """
    import functools, os, sys, time
    from pathlib import Path
    from flixrec.data import ratings, synthetic
    from flixrec.data.netflix import NetflixReader

    work, data = Path(sys.argv[1]), Path(sys.argv[2])

    def counted(what, fn):
        @functools.wraps(fn)  # ensure_synthetic reads generate's signature
        def wrapper(*args, **kwargs):
            with open(work / what, "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(1.0)  # long enough for an unlocked second job to start its own build
            return fn(*args, **kwargs)
        return wrapper

    synthetic.generate = counted("generated", synthetic.generate)
    NetflixReader.parse = counted("parsed", NetflixReader.parse)
    (work / f"started-{os.getpid()}").touch()
    while not (work / "go").exists():
        time.sleep(0.005)
    synthetic.ensure_synthetic(data, num_users=60, num_items=80, mean_ratings_per_user=10, seed=0)
    table = ratings.read_cached(NetflixReader(), data)
    print("RESULT", len(table), table.num_users, table.num_items, int(table.users.sum()))
"""


def test_parallel_jobs_generate_and_parse_the_data_once(tmp_path):
    jobs = 3
    work, data = tmp_path / "work", tmp_path / "data" / "synthetic"
    work.mkdir()
    logs = [tmp_path / f"job{j}.log" for j in range(jobs)]
    procs = [start_child(PARALLEL_CHILD, work, data, log=log) for log in logs]
    deadline = time.monotonic() + 120
    while len(list(work.glob("started-*"))) < jobs and time.monotonic() < deadline:
        time.sleep(0.02)
    (work / "go").touch()  # all jobs reach the data at the same moment
    for proc, log in zip(procs, logs):
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]
    results = {re.search(r"RESULT .*", log.read_text()).group(0) for log in logs}
    assert len(results) == 1, results
    assert len((work / "generated").read_text().split()) == 1
    assert len((work / "parsed").read_text().split()) == 1


# ----------------------------------------------------------------------------------------------
# 3. training faults


class NaNAfter(GMF):
    """Test net: a GMF whose logits turn NaN after `after` training steps."""

    def __init__(self, num_users: int, num_items: int, after: int, **kwargs) -> None:
        super().__init__(num_users, num_items, **kwargs)
        self.after, self.steps = after, 0

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        logits = super().forward(users, items)
        if self.training:
            self.steps += 1
            if self.steps > self.after:
                return logits * float("nan")
        return logits


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(make_cfg, capsys):
    dm, _ = build(make_cfg(["model=gmf"], run="probe"))
    after = len(dm.train_dataloader()) + 2  # the third step of the second epoch
    cfg = make_cfg(["model=gmf", "model.net._target_=tests.test_faults.NaNAfter",
                    f"+model.net.after={after}", "trainer.max_epochs=3"])
    err = expect_user_error(train, cfg, capsys)
    assert re.search(rf"loss became nan at epoch 1, step {after}\b", err), err
    assert "model.optimizer.lr" in err and "precision" in err
    run = Path(cfg.paths.output_dir)
    assert not (run / "metrics.json").exists() and (run / "FAILED").is_file()
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 0
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())


def test_gpu_out_of_memory_suggests_smaller_batches(make_cfg, capsys, monkeypatch):
    def out_of_memory(self, batch, batch_idx):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(RecModule, "training_step", out_of_memory)
    cfg = make_cfg(["model=gmf", "data.batch_size=128", "data.eval_batch_size=64"])
    err = expect_user_error(train, cfg, capsys)
    assert "ran out of memory" in err and "Tried to allocate 20.00 GiB" in err
    assert "data.batch_size (now 128)" in err and "data.eval_batch_size (now 64)" in err


# ----------------------------------------------------------------------------------------------
# 4. configuration errors


def run_train_py(argv: list[str], monkeypatch) -> None:
    """`python train.py argv...`, in this process: Hydra parses, composes and reports errors
    exactly as on the command line, without another interpreter start-up."""
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    try:
        runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("override, words", [
    ("model=nosuch", ["Could not find 'model/nosuch'", "Available options in 'model'", "gmf", "neumf"]),
    ("data=nosuch", ["Could not find 'data/nosuch'", "Available options in 'data'", "netflix", "tiny"]),
    ("trainer=nosuch", ["Could not find 'trainer/nosuch'", "Available options in 'trainer'", "cpu", "gpu"]),
    ("model.net.dimm=3", ["Could not override 'model.net.dimm'", "Key 'dimm' is not in struct"]),
    ("trainer.max_epoch=3", ["Could not override 'trainer.max_epoch'", "Key 'max_epoch' is not in struct"]),
])
def test_unknown_names_and_misspelt_keys_are_rejected(override, words, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        run_train_py([override, f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch)
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "run").exists()  # rejected before the run started


def test_cli_missing_data_root_is_one_message_without_traceback(tmp_path):
    missing = tmp_path / "missing"
    proc = subprocess.run([sys.executable, "train.py", "data=netflix", f"data.root={missing}",
                           "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr
    message = [line for line in proc.stderr.splitlines() if line.startswith("flixrec: error:")]
    assert len(message) == 1 and str(missing) in message[0] and "combined_data_1.txt" in message[0]


IMPOSSIBLE = [  # overrides -> what the message says; {tmp}: the test's temporary directory
    (["data.num_negatives=0"], ["data.num_negatives=0", "at least 1"]),
    (["data.num_test_negatives=299"], ["data.num_test_negatives=299", "not rated"]),
    (["data.negatives_exclude=test"], ["data.negatives_exclude='test'", "train", "all"]),
    (["model.sparse_embeddings=true", "trainer.gradient_clip_val=1.0"], ["gradient_clip_val", "sparse"]),
    (["model.sparse_embeddings=true", "trainer=ddp_cpu"], ["one process", "ddp"]),
    (["data.num_test_negatives=50", "model.ks=[5,10,60]"],
     ["model.ks=[5, 10, 60]", "K=60", "51 candidates"]),
    (["data/subset=date_window", "data.subset.start=2030-01-01"], ["leaves no users", "2030-01-01"]),
    (["data=netflix", "data.root={tmp}/missing"], ["{tmp}/missing", "combined_data_1.txt"]),
    (["data=netflix", "data.root={tmp}/empty"], ["no Netflix rating files", "combined_data_1.txt"]),
    (["data=ml-100k", "data.root={tmp}/empty"], ["{tmp}/empty", "u.data"]),
    (["+model.net.dimm=3"], ["could not build", "unexpected keyword argument 'dimm'"]),
    (["data.min_ratings=1"], ["data.min_ratings=1", "a test and a validation rating"]),
    (["data.split=temporal", "data.min_ratings=0"], ["data.min_ratings=0", "at least 1"]),
    (["train=false"], ["train=false test=true needs ckpt_path", "untrained"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs=0 trains nothing"]),
    (["seed=-1"], ["seed=-1", "0 to 4294967295"]),
]


@pytest.mark.parametrize("overrides, words", IMPOSSIBLE, ids=[" ".join(o) for o, _ in IMPOSSIBLE])
def test_impossible_values_fail_before_training(overrides, words, tmp_path, make_cfg, capsys):
    (tmp_path / "empty").mkdir()
    cfg = make_cfg([o.format(tmp=tmp_path) for o in overrides])
    err = expect_user_error(train, cfg, capsys)
    for w in words:
        assert w.format(tmp=tmp_path) in err, (w, err)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_negatives_exclude_all_with_a_user_who_rated_everything_fails_before_training(tmp_path, make_cfg,
                                                                                       capsys):
    # user 1 rated all 12 movies (in training, without its 2 held-out ratings, 2 stay unrated)
    rows = [(1, i, 100 + i) for i in range(1, 13)] + [(2, i, 100 + i) for i in (1, 2, 3)] \
        + [(3, i, 100 + i) for i in (1, 2, 4)]
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in rows))
    over = ["data=ml-100k", f"data.root={tmp_path}", "data.num_test_negatives=9", "model.ks=[5,10]",
            "trainer.max_epochs=1"]
    assert train(make_cfg(over, run="train")) is not None  # negatives avoid training ratings only
    cfg = make_cfg([*over, "data.negatives_exclude=all"], run="all")
    err = expect_user_error(train, cfg, capsys)
    assert "rated all 12 movies (data.negatives_exclude=all)" in err
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------
# 5. determinism


def data_streams(cfg, global_seed: int) -> dict[str, Tensor]:
    """Everything random about the data of a run: split, candidates, and the first two epochs'
    training order and negatives. The global torch RNG is seeded with `global_seed` first: the
    data must not draw from it."""
    torch.manual_seed(global_seed)
    dm = instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")

    trainer = attach_training_trainer(dm)
    out = {"train_users": dm.train_users, "train_items": dm.train_items,
           "eval_users": dm.eval_users, "val_items": dm.val_items, "test_items": dm.test_items}
    for epoch in (0, 1):
        trainer.current_epoch = epoch
        batches = [dm.on_after_batch_transfer(b, 0) for b in dm.train_dataloader()]
        out[f"epoch{epoch}_users"] = torch.cat([b["users"] for b in batches])
        out[f"epoch{epoch}_items"] = torch.cat([b["items"] for b in batches])
    return out


def test_same_seed_same_split_candidates_order_and_negatives(make_cfg):
    a = data_streams(make_cfg([], run="a"), global_seed=1)
    b = data_streams(make_cfg([], run="b"), global_seed=2)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["epoch0_items"], a["epoch1_items"])  # negatives are redrawn each epoch
    c = data_streams(make_cfg(["seed=7"], run="c"), global_seed=1)
    for name in ("test_items", "epoch0_items", "epoch1_users"):
        assert not torch.equal(a[name], c[name]), name


def last_weights(run: Path) -> dict[str, Tensor]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return {**ckpt["state_dict"], "epoch": torch.tensor(ckpt["epoch"])}


def assert_same_run(a: Path, b: Path) -> None:
    ma, mb = read_metrics(a), read_metrics(b)
    for key in ("best_epoch", "val", "test"):
        assert ma[key] == mb[key], key
    wa, wb = last_weights(a), last_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


# MLP with dropout draws from the global RNG; the high learning rate makes an early epoch best
DETERMINISTIC = ["model=mlp", "model.net.dropout=0.3", "model.optimizer.lr=0.02",
                 "trainer.deterministic=true"]


def test_deterministic_cpu_training_repeats_exactly(make_cfg):
    runs = [make_cfg(DETERMINISTIC, run=name) for name in ("a", "b")]
    for cfg in runs:
        train(cfg)
    assert_same_run(*(Path(cfg.paths.output_dir) for cfg in runs))


def interrupted_and_straight(make_cfg, overrides: list[str], name: str) -> tuple[Path, Path]:
    """Run directories of the same 4-epoch run, once stopped after 2 epochs and resumed from its
    last.ckpt, once straight through."""
    first = make_cfg(overrides + ["trainer.max_epochs=2"], run=f"{name}-first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    resumed = make_cfg(overrides + ["trainer.max_epochs=4", f"ckpt_path={last}"], run=f"{name}-resumed")
    straight = make_cfg(overrides + ["trainer.max_epochs=4"], run=f"{name}-straight")
    train(resumed)
    train(straight)
    return Path(resumed.paths.output_dir), Path(straight.paths.output_dir)


def test_resume_from_last_checkpoint_matches_an_uninterrupted_run(make_cfg):
    resumed_dir, straight_dir = interrupted_and_straight(make_cfg, DETERMINISTIC, "plain")
    # the best epoch came before the interruption, so the resumed run must have carried it over
    assert read_metrics(straight_dir)["best_epoch"] < 2, "no longer tests the carried-over best: " \
        "tune DETERMINISTIC (a higher lr) so that an epoch before the interruption is best"
    assert_same_run(resumed_dir, straight_dir)
    assert read_metrics(resumed_dir)["checkpoint"] == "checkpoints/best.ckpt"


def test_resume_with_ema_weights_matches_an_uninterrupted_run(make_cfg):
    """Resuming restores both the raw weights and their moving average (callbacks=ema)."""
    ema = ["model=gmf", "callbacks=ema", "callbacks.ema.decay=0.9", "trainer.deterministic=true"]
    assert_same_run(*interrupted_and_straight(make_cfg, ema, "ema"))


def test_resume_with_another_seed_data_or_model_is_refused_with_the_command_that_resumes(make_cfg, capsys):
    """The seed draws the split and the candidates, so a resumed run on another seed would
    carry over a best score of another test; other data or sizes would not even load."""
    first = make_cfg(["model=gmf", "seed=3", "trainer.max_epochs=1"], run="first")
    train(first)
    run = Path(first.paths.output_dir)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "overrides.yaml").write_text(
        "- model=gmf\n- seed=3\n- data.root=${paths.data_dir}/tiny\n- hydra.run.dir=x\n")
    last = run / "checkpoints" / "last.ckpt"
    cfg = make_cfg(["model=gmf", "seed=4", "model.net.dim=8", "data.num_negatives=2", "trainer.max_epochs=2",
                    f"ckpt_path={last}"], run="other")
    err = expect_user_error(train, cfg, capsys)
    assert "seed: 3 in the checkpoint, 4 now" in err
    assert "model.net.dim: 32 in the checkpoint, 8 now" in err
    assert "data.num_negatives: 4 in the checkpoint, 2 now" in err
    # the run's own overrides as typed (interpolations unresolved), hydra.* dropped
    assert f"python train.py model=gmf seed=3 'data.root=${{paths.data_dir}}/tiny' ckpt_path={last}" in err
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    # testing it with train=false is held to the same settings, and evaluate.py is suggested
    tested = make_cfg(["model=gmf", "seed=4", "train=false", f"ckpt_path={last}"], run="tested")
    err = expect_user_error(train, tested, capsys)
    assert "seed: 3 in the checkpoint, 4 now" in err and f"python evaluate.py ckpt_path={last}" in err
    # how it runs and where the data lives may change (and max_epochs may grow): this resumes
    ok = make_cfg(["model=gmf", "seed=3", "trainer.max_epochs=2", "model.full_ranking=false",
                   "data.eval_batch_size=64", f"data.root={Path(first.data.root).parent}/../{Path(first.data.root).parent.name}/tiny",
                   f"ckpt_path={last}"], run="same")
    assert train(ok) is not None


def test_resume_from_a_checkpoint_that_predates_a_setting(make_cfg):
    """A checkpoint written before a config key existed resumes: the key is not compared."""
    first = make_cfg(["model=gmf", "trainer.max_epochs=1"], run="old")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, weights_only=False)
    del ckpt["flixrec_config"]["model"]["sparse_embeddings"], ckpt["flixrec_config"]["data"]["min_ratings"]
    torch.save(ckpt, last)
    assert train(make_cfg(["model=gmf", "trainer.max_epochs=2", f"ckpt_path={last}"], run="resumed")) is not None


def test_repeated_user_movie_pairs_stop_the_run_naming_the_file_pair_and_dates(tmp_path, make_cfg, capsys):
    rows = [(u, i, 880000000 + 1000 * i) for u in (1, 2, 3) for i in range(1, 9)]
    rows += [(2, 5, 890000000), (3, 7, 880007000), (3, 7, 881000000)]  # 2 pairs repeat, one 3 times
    (tmp_path / "u.data").write_text("".join(f"{u}\t{i}\t4\t{t}\n" for u, i, t in rows))
    cfg = make_cfg(["data=ml-100k", f"data.root={tmp_path}", "data.num_test_negatives=3", "model.ks=[1,2]"])
    err = expect_user_error(train, cfg, capsys)
    assert f"{tmp_path / 'u.data'}: customer 2 rated movie 5 2 times (1997-11-20 05:50:00, 1998-03-15 22:13:20)" in err
    assert "; 2 (customer, movie) pair(s) repeat" in err
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_fused_optimizer_with_fp16_gradient_clipping_is_refused(make_cfg):
    from flixrec.run import check_trainer

    cfg = make_cfg(["trainer.precision=16-mixed", "trainer.gradient_clip_val=1.0"])
    with pytest.raises(ConfigError, match="model.optimizer.fused=false"):
        check_trainer(cfg)
    check_trainer(make_cfg(["trainer.precision=16-mixed", "trainer.gradient_clip_val=1.0",
                            "model.optimizer.fused=false"]))
    check_trainer(make_cfg(["trainer.precision=bf16-mixed", "trainer.gradient_clip_val=1.0"]))
