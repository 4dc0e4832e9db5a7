"""Experiment workflow: sweeps, comparison report, TensorBoard contents, recommendations, DDP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flixrec.run import evaluate, train
from tests.conftest import ROOT

FAST = ["data=tiny", "trainer.max_epochs=2", "trainer.enable_progress_bar=false"]


def run_cli(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_sweep_then_compare_groups_runs_by_model(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = run_cli(["train.py", "-m", "model=gmf,mlp", "seed=1,2", "logger=none", *FAST,
                    f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = sorted(sweep.glob("*/metrics.json"))
    assert len(metrics) == 4
    assert {json.loads(p.read_text())["model"] for p in metrics} == {"gmf", "mlp"}

    out = tmp_path / "compare"
    proc = run_cli(["evaluate.py", f"compare={sweep}", f"hydra.run.dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = pd.read_csv(out / "comparison.csv")
    assert len(runs) == 4 and sorted(runs["model"]) == ["gmf", "gmf", "mlp", "mlp"]
    assert {"seed", "lr", "batch_size", "test/hr@10", "test/ndcg@10"} <= set(runs.columns)
    md = (out / "comparison.md").read_text()
    assert "gmf" in md and "mlp" in md and "test/hr@10 mean" in md
    for name in ("hr@10.png", "ndcg@10.png"):
        png = (out / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    # the printed table holds both models with 2 runs each
    assert "gmf" in proc.stdout and "mlp" in proc.stdout
    # the per-model mean is the mean of that model's runs
    gmf = [json.loads(p.read_text())["test"]["hr@10"] for p in metrics
           if json.loads(p.read_text())["model"] == "gmf"]
    assert f"{sum(gmf) / 2:.4f}".rstrip("0") in md
    # the tiny data is synthetic: the oracle row is the ceiling of the same test candidates
    oracle = {json.loads(p.read_text())["seed"]: json.loads(p.read_text())["oracle"]["test"]["hr@10"]
              for p in metrics}
    row = next(line for line in md.splitlines() if "| oracle " in line)
    assert f"{sum(oracle.values()) / 2:.4f}".rstrip("0") in row and row.rstrip().endswith("|      2 |")


def test_failed_sweep_job_is_reported_and_others_survive(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    # num_negatives=0 is impossible: that job fails, the other one must still finish
    proc = run_cli(["train.py", "-m", "data.num_negatives=0,2", "logger=none", *FAST,
                    f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"])
    assert proc.returncode != 0
    assert "1 failed job(s) of 2" in proc.stderr and "data.num_negatives=0" in proc.stderr
    assert (sweep / "1" / "metrics.json").is_file()
    assert (sweep / "0" / "FAILED").is_file() and not (sweep / "0" / "metrics.json").exists()


def test_tensorboard_holds_scalars_hparams_and_projector(make_cfg):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_cfg(["logger=tensorboard", "trainer.log_every_n_steps=1"])
    train(cfg)
    tb = Path(cfg.paths.output_dir) / "tensorboard"
    tags: set[str] = set()
    plugins: set[str] = set()
    for events in tb.glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        try:
            plugins |= set(acc.PluginTagToContent("hparams"))
        except KeyError:  # this events file holds no hparams
            pass
    assert {"train/loss_step", "train/loss", "val/hr@10", "val/ndcg@10",
            "train/samples_per_s", "lr-Adam"} <= tags
    assert "_hparams_/session_start_info" in plugins
    projector = (tb / "projector_config.pbtxt").read_text()
    assert "item_embeddings" in projector
    metadata = next(tb.glob("*/item_embeddings/metadata.tsv")).read_text().splitlines()
    num_items = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())["data_stats"]["items"]
    assert len(metadata) == num_items and "(" in metadata[0]  # one "Title (year)" label per movie


def test_recommend_prints_unrated_movies_with_titles(make_cfg, capsys):
    import torch

    from flixrec.run import build, recommend

    cfg = make_cfg(["model=gmf"])
    train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt", weights_only=False)
    dm, _ = build(cfg)
    customer = int(dm.table.user_ids[5])
    rows = recommend(ckpt, customer, 7)
    assert len(rows) == 7
    rated = set(dm.table.item_ids[dm.table.items[dm.table.users == 5]].tolist())
    assert not rated & {movie for movie, _, _ in rows}
    scores = [s for *_, s in rows]
    assert scores == sorted(scores, reverse=True)
    assert f"customer {customer}" in capsys.readouterr().out
    eval_cfg = make_cfg([f"ckpt_path={cfg.paths.output_dir}/checkpoints/best.ckpt",
                         "recommend.user=999999999"], config_name="evaluate", run="rec")
    with pytest.raises(Exception, match="no such customer id"):
        evaluate(eval_cfg)


def test_ddp_on_two_cpu_processes_matches_single_process_evaluation(tmp_path, data_dir):
    run = tmp_path / "ddp"
    proc = run_cli(["train.py", "trainer=ddp_cpu", "logger=none", *FAST, "model=gmf",
                    "data.full_ranking_users=40", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((run / "metrics.json").read_text())
    assert m["test"]["hr@10"] >= 0
    # the same checkpoint tested in one process gives the same metrics: candidates and metric
    # sums were exact across ranks
    ev = tmp_path / "ddp-eval"
    proc = run_cli(["evaluate.py", f"ckpt_path={run / m['checkpoint']}", f"hydra.run.dir={ev}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((ev / "metrics.json").read_text())
    # metrics.json rounds to 6 places and ranks sum floats in another order: allow 2e-6
    assert single["test"] == pytest.approx(m["test"], abs=2e-6)
    # so does the full ranking of the sampled users, which each rank took its share of
    assert single["test_full_users"] == m["test_full_users"] == 40
    assert single["test_full"] == pytest.approx(m["test_full"], abs=2e-6)


def test_gpu_trainer_without_gpu_fails_at_once(tmp_path, data_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the no-GPU message cannot be shown here")
    proc = run_cli(["train.py", "trainer=gpu", *FAST, f"paths.data_dir={data_dir}",
                    f"hydra.run.dir={tmp_path / 'gpu'}"])
    assert proc.returncode != 0
    assert "needs a CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr


def test_comparison_has_an_oracle_row_per_synthetic_data_set():
    from flixrec.report import summarise

    runs = pd.DataFrame([
        # data set a ran full ranking, data set b did not: b still gets its oracle row
        {"data": "a", "model": "gmf", "seed": 1, "test/hr@10": 0.5, "test_full/hr@10": 0.2,
         "oracle_test/hr@10": 0.8, "oracle_test_full/hr@10": 0.4},
        {"data": "b", "model": "gmf", "seed": 1, "test/hr@10": 0.6,
         "oracle_test/hr@10": 0.9},
        {"data": "b", "model": "mlp", "seed": 1, "test/hr@10": 0.4,
         "oracle_test/hr@10": 0.9},   # same data and seed: the oracle counts once
    ])
    summary = summarise(runs).set_index(["data", "model"])
    assert summary.loc[("a", "oracle"), "test/hr@10 mean"] == 0.8
    assert summary.loc[("a", "oracle"), "test_full/hr@10 mean"] == 0.4
    assert summary.loc[("b", "oracle"), "test/hr@10 mean"] == 0.9
    assert summary.loc[("b", "oracle"), "runs"] == 1


def test_comparison_never_averages_runs_of_another_protocol_and_gives_each_its_oracle(make_cfg):
    from flixrec.report import summarise
    from flixrec.run import key_hparams

    def run(data, seed, hr, oracle=None, *overrides):  # a row as collect_runs reads a metrics.json
        return {"data": data, "model": "neumf", "seed": seed, **key_hparams(make_cfg(list(overrides))),
                "test/hr@10": hr, **({"oracle_test/hr@10": oracle} if oracle else {})}

    runs = pd.DataFrame([run("d", 1, 0.7, 0.8), run("d", 1, 0.3, 0.5, "data.split=temporal"),
                         run("d", 1, 0.2, 0.4, "data.split=temporal", "data.temporal_fraction=0.5"),
                         run("e", 1, 0.5), run("e", 2, 0.6)])   # one protocol: the bare data name
    summary = summarise(runs).set_index(["data", "model"])
    assert set(summary.index) == {("d (split=leave_one_out)", "neumf"), ("d (split=leave_one_out)", "oracle"),
                                  ("d (split=temporal(0.8))", "neumf"), ("d (split=temporal(0.8))", "oracle"),
                                  ("d (split=temporal(0.5))", "neumf"), ("d (split=temporal(0.5))", "oracle"),
                                  ("e", "neumf")}
    assert summary.loc[("d (split=temporal(0.8))", "neumf"), "test/hr@10 mean"] == 0.3
    assert summary.loc[("d (split=temporal(0.8))", "oracle"), "test/hr@10 mean"] == 0.5
    assert summary.loc[("d (split=leave_one_out)", "oracle"), "test/hr@10 mean"] == 0.8
    assert summary.loc[("e", "neumf"), "runs"] == 2


def test_run_hparams_name_the_protocol_schedule_and_callbacks(make_cfg):
    from flixrec.run import key_hparams

    h = key_hparams(make_cfg(["data=ml-100k", "data/subset=kcore", "data.split=temporal",
                              "callbacks=[ema,early_stopping]",
                              "model.scheduler={_target_:torch.optim.lr_scheduler.ExponentialLR,gamma:0.9}"]))
    assert h["split"] == "temporal(0.8)"
    assert h["subset"] == "kcore(min_user_ratings=5, min_item_ratings=5, min_rating=None)"
    assert h["num_test_negatives"] == 100 and h["min_ratings"] == 3
    assert h["scheduler"] == "ExponentialLR(gamma=0.9)" and h["callbacks"] == "early_stopping,ema"
    plain = key_hparams(make_cfg([]))
    assert plain["split"] == "leave_one_out" and plain["scheduler"] == "none"
    assert plain["callbacks"] == "default" and plain["subset"].startswith("full(")


def test_comparison_keeps_swept_settings_apart_and_names_them():
    from flixrec.report import summarise

    runs = pd.DataFrame([
        {"data": "d", "model": "neumf", "seed": s, "lr": lr, "loss": "bce", "batch_size": 256,
         "run": f"{lr}/{s}", "best_epoch": s, "test/hr@10": hr}
        for (lr, s, hr) in [(0.001, 1, 0.5), (0.001, 2, 0.7), (0.01, 1, 0.8), (0.01, 2, 0.9)]
    ] + [
        {"data": "d", "model": "gmf", "seed": s, "lr": 0.001, "loss": "bce", "batch_size": 256,
         "run": f"gmf/{s}", "best_epoch": 3 - s, "test/hr@10": 0.4}   # seeds only: one plain row
        for s in (1, 2)
    ])
    runs = pd.concat([runs, pd.DataFrame([  # a setting that follows the seed splits nothing
        {"data": "d", "model": "neumf_pretrained", "seed": s, "lr": 1.0, "net.gmf_ckpt": f"pre/{s}/best.ckpt",
         "run": f"pt/{s}", "test/hr@10": 0.5} for s in (1, 2)])], ignore_index=True)
    runs = pd.concat([runs, pd.DataFrame([  # lr changing with the seed group, and an older run
        # that predates the logged `loss` (it trained with the default, bce)
        {"data": "d", "model": "mf", "seed": s, "lr": lr, "loss": loss, "run": f"mf/{s}", "test/hr@10": 0.3}
        for s, lr, loss in [(1, 0.1, "bce"), (2, 0.1, "bce"), (3, 0.2, "bce"), (4, 0.2, None)]])],
        ignore_index=True)
    runs = pd.concat([runs, pd.DataFrame([  # a missing setting with no known default
        {"data": "d", "model": "svd", "seed": 1, "num_negatives": n, "run": f"svd/{n}", "test/hr@10": 0.2}
        for n in (4, None)])], ignore_index=True)
    summary = summarise(runs).set_index("model")
    assert set(summary.index) == {"gmf", "neumf (lr=0.001)", "neumf (lr=0.01)", "neumf_pretrained",
                                  "mf (lr=0.1)", "mf (lr=0.2)", "svd (num_negatives=4)",
                                  "svd (num_negatives=unset)"}
    assert summary.loc["neumf (lr=0.001)", "test/hr@10 mean"] == 0.6
    assert summary.loc["neumf (lr=0.01)", "test/hr@10 mean"] == 0.85
    assert summary.loc["neumf (lr=0.01)", "runs"] == summary.loc["mf (lr=0.1)", "runs"] == 2
    assert summary.loc["mf (lr=0.2)", "runs"] == 2
