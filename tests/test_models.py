"""Nets, pre-training, full ranking and the oracle: shapes, gradients and hand-checked values."""

from __future__ import annotations

import copy
import json
import math
import subprocess
from functools import partial
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.nn.functional import binary_cross_entropy_with_logits

from flixrec.data.sampling import pair_keys, rated_items
from flixrec.errors import ConfigError
from flixrec.metrics import RankingMetrics, full_positive_rank
from flixrec.models.module import RecModule, full_ranks, ranking_loss
from flixrec.models.nets import GMF, MF, MLP, SVD, Fusion, NeuMF, Pop
from flixrec.run import build, evaluate, train
from tests.conftest import ROOT

U, I = 7, 11

NETS = {
    "gmf": lambda: GMF(U, I, dim=4),
    "mlp": lambda: MLP(U, I, layers=[8, 6, 4], dropout=0.1),
    "neumf": lambda: NeuMF(U, I, gmf_dim=4, mlp_layers=[8, 4], dropout=0.1),
    "mf": lambda: MF(U, I, dim=4),
    "svd": lambda: SVD(U, I, dim=4),
    "fusion": lambda: Fusion(U, I, dim=4),
    "fusion_per_user": lambda: Fusion(U, I, dim=4, per_user_weights=True),
    "pop": lambda: Pop(U, I, item_counts=torch.arange(I) % 5),
}


def batch(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(U, (n,), generator=g), torch.randint(I, (n,), generator=g),
            torch.randint(2, (n,), generator=g).float())


@pytest.mark.parametrize("name", NETS)
def test_net_maps_users_items_to_float32_logits(name):
    torch.manual_seed(0)
    net = NETS[name]()
    users, items, _ = batch()
    out = net(users, items)
    assert out.shape == (len(users),) and out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the output layer stays float32
        assert net(users, items).dtype == torch.float32


@pytest.mark.parametrize("name", [n for n in NETS if n != "pop"])
def test_gradient_reaches_every_trainable_parameter(name):
    torch.manual_seed(0)
    net = NETS[name]()
    net.train()
    users, items, labels = batch(200)
    loss = binary_cross_entropy_with_logits(net(users, items), labels)
    if hasattr(net, "regularization"):
        loss = loss + 0.03 * net.regularization(users, items)
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient for {pname}"


def test_pop_has_nothing_to_train():
    assert not any(p.requires_grad for p in NETS["pop"]().parameters())


@pytest.mark.parametrize("name", NETS)
def test_grouped_and_shared_items_equal_scoring_each_pair(name):
    """items (B, m) (training groups, candidates) and (1, m) (full ranking) give the logits
    of scoring every (user, item) pair on its own."""
    torch.manual_seed(0)
    net = NETS[name]().eval()
    users = torch.tensor([3, 0, 6])
    grouped = torch.tensor([[1, 4, 4, 9], [0, 2, 10, 5], [7, 7, 3, 1]])
    shared = torch.arange(I)[None]
    for items in (grouped, shared):
        out = net(users, items)
        m = items.shape[1]
        each = net(users.repeat_interleave(m), items.expand(len(users), -1).reshape(-1)).view(len(users), m)
        assert out.shape == (3, m) and out.dtype == torch.float32
        torch.testing.assert_close(out, each, rtol=1e-5, atol=1e-6)


def test_fusion_per_user_weights_live_in_per_user_tables():
    K, H = 4, 3
    net = Fusion(U, I, dim=K, hidden=H, per_user_weights=True)
    assert net.hidden_weight.weight.shape == (U, 2 * K * H)
    assert net.hidden_bias.weight.shape == (U, H)
    assert net.output_weight.weight.shape == (U, H + K)
    assert net.output_bias.weight.shape == (U, 1)
    assert net.user_gmf_weight.weight.shape == (U, K)
    # one user's loss moves only that user's weights
    net(torch.tensor([2, 2]), torch.tensor([1, 5])).sum().backward()
    touched = net.hidden_weight.weight.grad.abs().sum(1) > 0
    assert touched.tolist() == [u == 2 for u in range(U)]
    shared = Fusion(U, I, dim=K, hidden=H)
    assert shared.hidden_layer.weight.shape == (H, 2 * K) and shared.output.weight.shape == (1, H + K)


def test_svd_regularization_hand_example():
    net = SVD(3, 4, dim=2)
    with torch.no_grad():
        net.user_emb.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0], [0.0, 0.0]]))
        net.item_emb.weight.copy_(torch.tensor([[0.5, 0.5], [3.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
        net.user_bias.weight.copy_(torch.tensor([[1.0], [-2.0], [0.0]]))
        net.item_bias.weight.copy_(torch.tensor([[0.0], [1.0], [0.0], [0.0]]))
    users, items = torch.tensor([0, 1]), torch.tensor([0, 1])
    # sample 0: |p|^2 = 5, |q|^2 = 0.5, b_u^2 = 1, b_i^2 = 0 -> 6.5
    # sample 1: |p|^2 = 1, |q|^2 = 9,   b_u^2 = 4, b_i^2 = 1 -> 15
    assert net.regularization(users, items).item() == pytest.approx(0.5 * (6.5 + 15) / 2, abs=1e-6)
    # grouped: user 0 with items 0 and 1, user 1 with items 1 and 1 -> per pair, as if flattened:
    # |p|^2 + b_u^2: 6, 6, 5, 5; |q|^2 + b_i^2: 0.5, 10, 10, 10
    grouped = net.regularization(users, torch.tensor([[0, 1], [1, 1]]))
    assert grouped.item() == pytest.approx(0.5 * (6 + 6 + 5 + 5 + 0.5 + 10 + 10 + 10) / 4, abs=1e-6)
    # logit = b_u + b_i + p.q, no global bias by default
    assert net(users, items).tolist() == pytest.approx([1 + 0 + 1.5, -2 + 1 + 0])
    assert net.bias is None and MF(3, 4).bias is not None


@pytest.mark.parametrize("name", ["gmf", "mlp", "neumf", "mf"])
def test_regularization_of_a_big_batch_equals_the_mean_over_its_pairs(name):
    """Batches with more rows than a table take the penalty over the table, weighted by how
    often each row was drawn: the same value and gradient as gathering every pair's rows."""
    torch.manual_seed(0)
    net = NETS[name]()
    users, items = torch.randint(U, (30,)), torch.randint(I, (30, 5))  # 150 pairs > I, 30 > U
    flat_users = users.repeat_interleave(5)
    big = net.regularization(users, items)
    small = sum(net.regularization(flat_users[k:k + 5], items.reshape(-1)[k:k + 5]) for k in range(0, 150, 5)) / 30
    torch.testing.assert_close(big, small)
    grads = torch.autograd.grad(big, list(net.parameters()), allow_unused=True)
    expected = torch.autograd.grad(small, list(net.parameters()), allow_unused=True)
    for g, e in zip(grads, expected):
        assert (g is None) == (e is None) and (g is None or torch.allclose(g, e, atol=1e-7))


def test_l2_needs_a_net_with_a_regularization_term():
    with pytest.raises(ConfigError, match="model.l2"):
        RecModule(Fusion(U, I), optimizer=None, l2=0.1)
    with pytest.raises(ConfigError, match="model.optimizer"):
        RecModule(GMF(U, I), optimizer=None)
    assert not RecModule(Pop(U, I), optimizer=None).automatic_optimization


# -- full ranking ---------------------------------------------------------------------------

def test_full_positive_rank_hand_example():
    scores = torch.tensor([[0.9, 0.5, 0.7, 0.5, 0.1],
                           [0.2, 0.3, 0.9, 0.8, 0.3],
                           [0.0, 0.0, 0.0, 0.0, 0.0]])
    positives = torch.tensor([1, 4, 2])
    excluded = torch.tensor([[True, False, False, False, False],   # item 0 is a training item
                             [False, False, True, True, False],
                             [False, False, False, False, False]])
    # row 0: candidates 2 (0.7 > 0.5) and 3 (tie) count against item 1; item 0 is excluded -> 2
    # row 1: items 2, 3 excluded; item 1 ties (0.3) -> 1
    # row 2: constant scores: all 4 others tie -> 4
    assert full_positive_rank(scores, positives, excluded).tolist() == [2, 1, 4]
    nan = torch.tensor([[float("nan"), 1.0, 2.0]])
    assert full_positive_rank(nan, torch.tensor([0]), torch.tensor([[False, True, False]])).tolist() == [1]


def brute_force_ranks(net, users, positives, train_pairs, num_items):
    ranks = []
    for u, pos in zip(users.tolist(), positives.tolist()):
        seen = {i for (v, i) in train_pairs if v == u}
        s = net(torch.full((num_items,), u), torch.arange(num_items)).tolist()
        ranks.append(sum(1 for i in range(num_items) if i != pos and i not in seen and s[i] >= s[pos]))
    return ranks


@pytest.mark.parametrize("name", ["neumf", "fusion_per_user", "pop"])
@pytest.mark.parametrize("max_cells", [I, 3 * I, 10_000])  # one user per chunk .. all at once
def test_full_ranks_match_brute_force(name, max_cells):
    torch.manual_seed(1)
    net = NETS[name]().eval()
    users = torch.tensor([0, 2, 3, 5, 6])
    positives = torch.tensor([1, 4, 0, 10, 7])
    train_users, train_items, _ = batch(30, seed=3)
    keys = torch.unique(pair_keys(train_users, train_items, I))
    held_out = set((users * I + positives).tolist())  # a held-out item is never a training item
    keys = keys[torch.tensor([k not in held_out for k in keys.tolist()])]
    rows, items = rated_items(keys, users, I)
    pairs = {(int(k) // I, int(k) % I) for k in keys}
    assert sorted(zip(users[rows].tolist(), items.tolist())) == sorted(p for p in pairs if p[0] in users.tolist())
    with torch.no_grad():
        got = full_ranks(net, users, positives, rows, items, I, max_cells)
        expected = brute_force_ranks(net, users, positives, pairs, I)
    assert got.tolist() == expected


# -- models through the pipeline -------------------------------------------------------------

def read_metrics(cfg) -> dict:
    return json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())


def test_pop_reproduces_the_popularity_baseline_exactly(make_cfg):
    cfg = make_cfg(["model=pop", "trainer.max_epochs=1"], run="pop")
    train(cfg)
    m = read_metrics(cfg)
    assert m["test"] == m["baseline_pop"]["test"]
    assert m["hparams"]["optimizer"] == "none"


def test_test_full_and_oracle_in_metrics(make_cfg):
    cfg = make_cfg(["model=mf", "trainer.max_epochs=1"], run="mf")
    train(cfg)
    m = read_metrics(cfg)
    ks = {"hr@5", "ndcg@5", "hr@10", "ndcg@10", "hr@20", "ndcg@20", "mrr"}
    assert set(m["test_full"]) == ks and set(m["oracle"]["test"]) == ks
    # the full catalogue is harder than 1 + 50 candidates
    assert m["test_full"]["hr@10"] <= m["test"]["hr@10"]
    # the oracle ranks the same candidates by the generator's true scores
    dm, _ = build(cfg)
    truth = dm.true_scores(dm.eval_users[:, None], dm.test_items)
    metric = RankingMetrics((5, 10, 20))
    metric.update(truth)
    assert m["oracle"]["test"]["hr@10"] == pytest.approx(metric.compute()["hr@10"].item(), abs=1e-6)
    assert m["oracle"]["test"]["hr@10"] > m["baseline_pop"]["test"]["hr@10"]
    assert 0 < m["oracle"]["test_full"]["hr@10"] <= m["oracle"]["test"]["hr@10"]


def test_generated_data_read_as_netflix_files_still_has_its_oracle(make_cfg, tmp_path):
    from flixrec.data.synthetic import generate

    root = tmp_path / "generated"
    generate(root, num_users=80, num_items=200, mean_ratings_per_user=15, seed=3)
    cfg = make_cfg(["data=netflix", f"data.root={root}", "data.num_test_negatives=50", "model=gmf",
                    "trainer.max_epochs=1"], run="netflix_layout")
    train(cfg)
    m = read_metrics(cfg)
    assert m["oracle"]["test"]["hr@10"] > m["baseline_pop"]["test"]["hr@10"]

    # rating files of another generated set under this set's truth: no oracle, and no lost run
    other = tmp_path / "other"
    generate(other, num_users=80, num_items=200, mean_ratings_per_user=15, seed=4)
    for f in other.glob("combined_data_*.txt"):
        f.replace(root / f.name)
    cfg = make_cfg(["data=netflix", f"data.root={root}", "data.num_test_negatives=50", "model=gmf",
                    "trainer.max_epochs=1"], run="replaced_files")
    train(cfg)
    assert "oracle" not in read_metrics(cfg) and "test" in read_metrics(cfg)

    (root / "synthetic.json").unlink()  # no longer a complete generated set: no oracle
    cfg = make_cfg(["data=netflix", f"data.root={root}", "data.num_test_negatives=50", "model=gmf",
                    "trainer.max_epochs=1"], run="plain_files")
    train(cfg)
    assert "oracle" not in read_metrics(cfg)


def test_full_ranking_on_a_seeded_sample_of_users(make_cfg):
    sample = ["data.full_ranking_users=30", "trainer.max_epochs=1"]
    cfg = make_cfg(["model=mf", *sample], run="mf")
    train(cfg)
    m = read_metrics(cfg)
    assert m["test_full_users"] == 30 < m["data_stats"]["eval_users"]
    # the same 30 users for every model of the seed, another 30 for another seed
    dm, module = build(cfg)
    mask = dm.full_rank_mask
    assert int(mask.sum()) == 30
    assert torch.equal(build(make_cfg(["model=gmf", *sample], run="gmf"))[0].full_rank_mask, mask)
    assert not torch.equal(build(make_cfg(["seed=7", *sample], run="seed7"))[0].full_rank_mask, mask)
    # test_full is the full ranking of exactly those users by the tested checkpoint
    state = torch.load(Path(cfg.paths.output_dir) / m["checkpoint"], weights_only=False)["state_dict"]
    module.load_state_dict(state)
    users, positives = dm.eval_users[mask], dm.test_items[mask, 0]
    rows, items = rated_items(dm.train_keys, users, dm.num_items)
    with torch.no_grad():
        ranks = full_ranks(module.net.eval(), users, positives, rows, items, dm.num_items)
    metric = RankingMetrics((5, 10, 20))
    metric.update(ranks=ranks)
    assert m["test_full"] == pytest.approx({k: float(v) for k, v in metric.compute().items()}, abs=1e-6)
    # and so is the oracle's
    truth = lambda u, i: dm.true_scores(u[:, None], i)  # noqa: E731
    metric.reset()
    metric.update(ranks=full_ranks(truth, users, positives, rows, items, dm.num_items))
    assert m["oracle"]["test_full"] == pytest.approx({k: float(v) for k, v in metric.compute().items()}, abs=1e-6)
    # the sampled candidates still cover every user (the sample changes nothing in training)
    everyone = make_cfg(["model=mf", "trainer.max_epochs=1"], run="everyone")
    train(everyone)
    assert read_metrics(everyone)["test"] == m["test"]
    assert read_metrics(everyone)["test_full_users"] == m["data_stats"]["eval_users"]
    # evaluate.py can sample for a checkpoint trained without: the same users, the same figures
    ckpt = Path(everyone.paths.output_dir) / "checkpoints" / "best.ckpt"
    eval_cfg = make_cfg([f"ckpt_path={ckpt}", "full_ranking_users=30"], config_name="evaluate", run="eval")
    evaluate(eval_cfg)
    assert read_metrics(eval_cfg)["test_full"] == m["test_full"]
    # ... and rank every user for one trained on a sample
    eval_cfg = make_cfg([f"ckpt_path={Path(cfg.paths.output_dir) / m['checkpoint']}", "full_ranking_users=all"],
                        config_name="evaluate", run="eval-all")
    evaluate(eval_cfg)
    assert read_metrics(eval_cfg)["test_full"] == read_metrics(everyone)["test_full"]
    assert read_metrics(eval_cfg)["test_full_users"] == m["data_stats"]["eval_users"]


def test_sampled_full_ranking_does_not_depend_on_the_evaluation_batches(make_cfg):
    # batches of 7 users hold 0, 1 or more of the 5 sampled users, at every offset
    runs = {}
    for size in (512, 7):
        cfg = make_cfg(["model=gmf", "trainer.max_epochs=1", "data.full_ranking_users=5",
                        f"data.eval_batch_size={size}"], run=f"batch{size}")
        train(cfg)
        runs[size] = read_metrics(cfg)
    assert runs[7]["test_full_users"] == runs[512]["test_full_users"] == 5
    assert runs[7]["test_full"] == pytest.approx(runs[512]["test_full"], abs=1e-6)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_batches_carry_the_sampled_users_seen_items(world_size):
    from flixrec.data.datamodule import EvalBatches

    gen = torch.Generator().manual_seed(0)
    num_items, users = 30, torch.arange(23)
    keys = pair_keys(torch.randint(23, (200,), generator=gen), torch.randint(num_items, (200,), generator=gen),
                     num_items).unique()
    mask = torch.zeros(23, dtype=torch.bool)
    mask[torch.randperm(23, generator=gen)[:9]] = True
    items = torch.randint(num_items, (23, 5), generator=gen)
    ranked = []
    for rank in range(world_size):
        for b in EvalBatches(users, items, 4, rank, world_size, seen_keys=keys, num_items=num_items,
                             full_mask=mask):
            chosen = b["users"][b["full_rows"]]
            rows, seen = rated_items(keys, chosen, num_items)
            assert torch.equal(b["seen_rows"], rows) and torch.equal(b["seen_items"], seen)
            ranked.append(chosen)
    assert torch.equal(torch.cat(ranked), users[mask])  # every sampled user once, in order


def test_full_ranking_users_must_be_positive(tmp_path):
    from flixrec.data.datamodule import RatingsDataModule
    from flixrec.data.netflix import NetflixReader

    with pytest.raises(ConfigError, match="full_ranking_users=0"):
        RatingsDataModule("x", str(tmp_path), NetflixReader, full_ranking_users=0)


def test_full_ranking_can_be_switched_off(make_cfg):
    cfg = make_cfg(["model=gmf", "trainer.max_epochs=1", "model.full_ranking=false"], run="off")
    train(cfg)
    m = read_metrics(cfg)
    assert "test_full" not in m and "test_full" not in m["oracle"]


# -- NeuMF from pre-trained GMF and MLP ------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    """Tiny GMF and MLP checkpoints (one epoch each) and the config that built them."""
    from tests.conftest import compose_cfg

    root = tmp_path_factory.mktemp("pretrain")
    paths = {}
    for model, extra in (("gmf", ["model.net.dim=8"]), ("mlp", ["model.net.layers=[16,8,4]"])):
        cfg = compose_cfg("train", ["data=tiny", "logger=none", "trainer.max_epochs=1",
                                    "trainer.enable_progress_bar=false", f"model={model}", *extra],
                          root / model, data_dir)
        train(cfg)
        paths[model] = root / model / "checkpoints" / "best.ckpt"
    return paths


def neumf_cfg(make_cfg, pretrained, *extra, run="neumf"):
    return make_cfg(["model=neumf_pretrained", "trainer.max_epochs=1",
                     f"model.net.gmf_ckpt={pretrained['gmf']}", f"model.net.mlp_ckpt={pretrained['mlp']}",
                     *extra], run=run)


def test_neumf_pretrained_copies_towers_and_combines_outputs(make_cfg, pretrained):
    _, model = build(neumf_cfg(make_cfg, pretrained))
    net = model.net
    assert isinstance(net, NeuMF)
    gmf = torch.load(pretrained["gmf"], weights_only=False)["state_dict"]
    mlp = torch.load(pretrained["mlp"], weights_only=False)["state_dict"]
    assert torch.equal(net.gmf.user_emb.weight, gmf["net.user_emb.weight"])
    assert torch.equal(net.gmf.item_emb.weight, gmf["net.item_emb.weight"])
    assert torch.equal(net.mlp.user_emb.weight, mlp["net.user_emb.weight"])
    assert torch.equal(net.mlp.item_emb.weight, mlp["net.item_emb.weight"])
    for k in ("tower.0.weight", "tower.0.bias", "tower.2.weight", "tower.2.bias"):
        assert torch.equal(net.mlp.state_dict()[k], mlp[f"net.{k}"])
    expected_w = torch.cat([0.5 * gmf["net.output.weight"], 0.5 * mlp["net.output.weight"]], dim=1)
    assert torch.equal(net.output.weight, expected_w)
    assert torch.allclose(net.output.bias, 0.5 * gmf["net.output.bias"] + 0.5 * mlp["net.output.bias"])
    # with alpha = 1 NeuMF starts as the trained GMF exactly
    _, gmf_only = build(neumf_cfg(make_cfg, pretrained, "model.net.alpha=1.0", run="alpha1"))
    g = GMF(net.gmf.user_emb.num_embeddings, net.gmf.item_emb.num_embeddings, dim=8)
    g.load_state_dict({k[4:]: v for k, v in gmf.items() if k.startswith("net.")})
    users, items, _ = batch(20)
    with torch.no_grad():
        assert torch.allclose(gmf_only.net(users, items), g(users, items), atol=1e-6)
    assert isinstance(model.optimizer_factory(params=[torch.zeros(1, requires_grad=True)]), torch.optim.SGD)


def test_neumf_pretrained_trains_and_evaluates_without_its_sources(make_cfg, pretrained, tmp_path):
    cfg = neumf_cfg(make_cfg, pretrained, run="train-pre")
    train(cfg)
    m = read_metrics(cfg)
    assert m["model"] == "neumf_pretrained" and 0 <= m["test"]["hr@10"] <= 1
    # the checkpoint stores the plain architecture, so evaluation needs no pre-training files
    ckpt = Path(cfg.paths.output_dir) / m["checkpoint"]
    stored = torch.load(ckpt, weights_only=False)
    assert stored["flixrec_config"]["model"]["net"]["_target_"] == "flixrec.models.nets.NeuMF"
    assert stored["flixrec_built_from"]["gmf_ckpt"] == str(pretrained["gmf"])
    moved = {k: v.rename(v.with_suffix(".moved")) for k, v in pretrained.items()}
    try:
        eval_cfg = make_cfg([f"ckpt_path={ckpt}"], config_name="evaluate", run="eval-pre")
        evaluate(eval_cfg)
    finally:
        for k, v in moved.items():
            v.rename(pretrained[k])
    e = read_metrics(eval_cfg)
    assert e["test"] == m["test"] and e["test_full"] == m["test_full"]
    # it resumes with the command it was trained with (the stored architecture is not compared)
    resumed = neumf_cfg(make_cfg, pretrained, "trainer.max_epochs=3",
                        f"ckpt_path={Path(cfg.paths.output_dir) / 'checkpoints' / 'last.ckpt'}", run="resume-pre")
    assert train(resumed) is not None


@pytest.mark.parametrize("override, message", [
    (["seed=7"], "seed=42"),
    (["model.net.gmf_dim=16"], "gmf_dim=16"),
    (["model.net.mlp_layers=[64,32]"], "mlp_layers"),
    (["data.generate.num_users=100"], "num_users"),
])
def test_neumf_pretrained_rejects_mismatched_checkpoints(make_cfg, pretrained, override, message):
    with pytest.raises(Exception) as err:
        build(neumf_cfg(make_cfg, pretrained, *override, run="bad"))
    cause = err.value.__cause__ or err.value
    assert isinstance(cause, ConfigError) and message in str(cause)


def test_neumf_pretrained_names_missing_or_swapped_checkpoints(make_cfg, pretrained):
    cfg = make_cfg(["model=neumf_pretrained"], run="missing")
    with pytest.raises(Exception, match="model.net.gmf_ckpt is not set"):
        build(cfg)
    swapped = make_cfg(["model=neumf_pretrained", f"model.net.gmf_ckpt={pretrained['mlp']}",
                        f"model.net.mlp_ckpt={pretrained['gmf']}"], run="swapped")
    with pytest.raises(Exception, match="not of GMF"):
        build(swapped)


@pytest.mark.slow
def test_neumf_pretrain_experiment_runs_all_three_steps(tmp_path, data_dir):
    sweep = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "train.py", "experiment=neumf_pretrain", "data=tiny", "logger=none",
         "trainer.max_epochs=1", f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert set(runs) == {"gmf_seed42", "mlp_seed42", "neumf_pretrained_seed42"}
    assert runs["neumf_pretrained_seed42"]["hparams"]["net.gmf_ckpt"] == \
        str(sweep / "gmf_seed42" / "checkpoints" / "best.ckpt")


def test_compiled_training_forward_matches_eager_and_keeps_checkpoint_keys():
    torch.manual_seed(0)
    net = NETS["neumf"]().eval()  # no dropout draws: the two must see the same function
    adam = partial(torch.optim.Adam, lr=1e-3)
    eager = RecModule(net, optimizer=adam, compile=False)
    compiled = RecModule(net, optimizer=adam, compile=True)
    users, items = torch.tensor([0, 3, 6]), torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    torch.testing.assert_close(compiled._train_forward(users, items), eager._train_forward(users, items))
    assert compiled._compiled is not None and eager._compiled is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    import pickle

    assert pickle.loads(pickle.dumps(compiled))._compiled is None  # recompiled on first use


def test_training_loss_weights_each_positive_with_its_negatives():
    torch.manual_seed(0)
    module = RecModule(NETS["gmf"](), optimizer=partial(torch.optim.Adam, lr=1e-3))
    module.log = lambda *args, **kwargs: None  # no trainer attached
    users, items = torch.tensor([0, 3]), torch.tensor([[1, 2, 3], [4, 5, 6]])
    plain = module.training_step({"users": users, "items": items}, 0)
    doubled = module.training_step({"users": users, "items": items, "weights": torch.tensor([2.0, 2.0])}, 0)
    only_first = module.training_step({"users": users, "items": items, "weights": torch.tensor([2.0, 0.0])}, 0)
    first = module.training_step({"users": users[:1], "items": items[:1]}, 0)
    torch.testing.assert_close(doubled, 2 * plain)
    torch.testing.assert_close(only_first, first)  # the mean runs over both rows: 2 * first / 2


# -- training losses ------------------------------------------------------------------------

def test_ranking_losses_hand_example():
    # one positive (logit 2) and two negatives (logits 0 and 1)
    logits = torch.tensor([[2.0, 0.0, 1.0]])

    def nll_sig(x):  # -log sigmoid(x)
        return math.log1p(math.exp(-x))

    bce = (nll_sig(2.0) + nll_sig(-0.0) + nll_sig(-1.0)) / 3
    bpr = (nll_sig(2.0 - 0.0) + nll_sig(2.0 - 1.0)) / 2
    softmax = -math.log(math.exp(2) / (math.exp(2) + math.exp(0) + math.exp(1)))
    for kind, expected in (("bce", bce), ("bpr", bpr), ("softmax", softmax)):
        assert ranking_loss(logits, kind).item() == pytest.approx(expected, rel=1e-6), kind
        # a per-positive weight multiplies that row; the mean keeps its count
        two = torch.cat([logits, logits])
        weighted = ranking_loss(two, kind, torch.tensor([3.0, 0.0])).item()
        assert weighted == pytest.approx(1.5 * expected, rel=1e-6), kind
    # bf16 logits give a float32 loss (safe under mixed precision)
    assert ranking_loss(logits.bfloat16(), "softmax").dtype == torch.float32


def test_pairwise_and_softmax_losses_only_see_the_gaps_between_scores():
    # shifting every logit of a row by the same amount changes BCE, not BPR or softmax
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    shifted = logits + torch.arange(5.0)[:, None]
    for kind in ("bpr", "softmax"):
        torch.testing.assert_close(ranking_loss(shifted, kind), ranking_loss(logits, kind))
    assert not torch.allclose(ranking_loss(shifted, "bce"), ranking_loss(logits, "bce"))


def test_unknown_loss_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="model.loss='hinge'.*bce, bpr, softmax"):
        RecModule(GMF(U, I), optimizer=partial(torch.optim.Adam, lr=1e-3), loss="hinge")


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_neumf_trains_with_each_loss_and_evaluate_reproduces_it(loss, make_cfg):
    cfg = make_cfg(["model=neumf", f"model.loss={loss}", "trainer.max_epochs=3"], run=f"train-{loss}")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    m = json.loads((run / "metrics.json").read_text())
    # on tiny synthetic data any working ranking loss learns far better than chance (10/101)
    assert m["val"]["hr@10"] > 0.3, m["val"]
    eval_cfg = make_cfg([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"], config_name="evaluate",
                        run=f"eval-{loss}")
    evaluate(eval_cfg)
    assert json.loads((Path(eval_cfg.paths.output_dir) / "metrics.json").read_text())["test"] == m["test"]


# -- sparse embedding gradients (model.sparse_embeddings) -----------------------------------

def l2_of(name: str) -> float:
    """An L2 weight for nets with a row penalty (its sparse path is tested too), else 0."""
    return 1e-3 if hasattr(NETS[name](), "regularization") else 0.0


def sparse_module(name: str, **optimizer) -> RecModule:
    torch.manual_seed(0)
    return RecModule(NETS[name](), optimizer=partial(torch.optim.Adam, **{"lr": 1e-2, **optimizer}),
                     sparse_embeddings=True, l2=l2_of(name))


@pytest.mark.parametrize("name", [n for n in NETS if n != "pop"])
def test_sparse_embeddings_give_the_same_loss_and_update_only_drawn_rows(name):
    users, items = torch.tensor([0, 3]), torch.tensor([[1, 2, 3], [4, 5, 1]])
    dense = RecModule(NETS[name](), optimizer=partial(torch.optim.Adam, lr=1e-2), l2=l2_of(name))
    sparse = sparse_module(name)
    sparse.net.load_state_dict(dense.net.state_dict())
    batch_ = {"users": users, "items": items}
    losses = []
    for module in (sparse, dense):
        torch.manual_seed(1)  # the same dropout masks
        losses.append(module.training_loss(batch_))
    torch.testing.assert_close(*losses)
    opt = sparse.configure_optimizers()
    tables = {n: m.weight.detach().clone() for n, m in sparse.net.named_modules()
              if isinstance(m, torch.nn.Embedding)}
    assert tables
    sparse.training_loss(batch_).backward()
    for n, m in sparse.net.named_modules():
        if isinstance(m, torch.nn.Embedding):
            assert m.weight.grad.is_sparse, n
    opt.step()
    for n, m in sparse.net.named_modules():
        if isinstance(m, torch.nn.Embedding):
            drawn = users if m.num_embeddings == U else items.unique()
            moved = (m.weight.detach() != tables[n]).any(1)
            assert moved[drawn].all() and moved.sum() == len(drawn.unique()), n  # the drawn rows only


def test_sparse_rows_adam_is_adam_on_dense_layers_and_sparse_adam_on_tables():
    from flixrec.optim import SparseRowsAdam

    def run(make_optimizers):
        torch.manual_seed(0)
        module = sparse_module("neumf")
        optimizers = make_optimizers(module)
        for step in range(3):
            for o in optimizers:
                o.zero_grad()
            users, items = torch.tensor([step, 4]), torch.tensor([[1, 2, 3], [5, 6, step]])
            module.training_loss({"users": users, "items": items}).backward()
            for o in optimizers:
                o.step()
        return module.net.state_dict()

    def tables(module):
        return [m.weight for m in module.net.modules() if isinstance(m, torch.nn.Embedding)]

    def separate(module):
        ids = {id(t) for t in tables(module)}
        return [torch.optim.Adam([p for p in module.parameters() if id(p) not in ids], lr=1e-2),
                torch.optim.SparseAdam(tables(module), lr=1e-2)]

    ours = run(lambda module: [module.configure_optimizers()])
    assert isinstance(sparse_module("neumf").configure_optimizers(), SparseRowsAdam)
    reference = run(separate)
    for key in reference:
        torch.testing.assert_close(ours[key], reference[key], msg=key)


@pytest.mark.parametrize("rows, draws", [(40, 300), (5000, 64)])  # both ways of summing rows
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("coalesced", [False, True])
def test_lazy_adam_matches_torch_sparse_adam(rows, draws, maximize, coalesced):
    from flixrec.optim import LazyAdam

    def run(cls, load_from=None):
        torch.manual_seed(0)
        table = torch.nn.Parameter(torch.randn(rows, 3))
        opt = cls([table], lr=0.05, betas=(0.8, 0.9), eps=1e-6, maximize=maximize)
        if load_from is not None:
            opt.load_state_dict(copy.deepcopy(load_from))  # loading aliases the state's tensors
        gen = torch.Generator().manual_seed(1)
        for step in range(5):
            idx = torch.randint(rows, (draws if step != 2 else 0,), generator=gen)  # step 2: none
            idx[:3] = idx[3:4]  # rows drawn several times
            opt.zero_grad()
            (torch.nn.functional.embedding(idx, table, sparse=True).pow(2).sum(1)
             * torch.arange(len(idx))).sum().backward()
            if coalesced:
                table.grad = table.grad.coalesce()
            opt.step()
        return table.detach(), opt.state_dict()

    theirs, their_state = run(torch.optim.SparseAdam)
    ours, our_state = run(LazyAdam)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.manual_seed(0)
    assert (ours != torch.randn(rows, 3)).all(1).sum() > min(rows, draws) // 2  # the drawn rows moved
    for name in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(our_state["state"][0][name], their_state["state"][0][name])
    assert our_state["state"][0]["step"] == their_state["state"][0]["step"] == 5  # empty steps count
    # checkpoints are interchangeable: continuing from SparseAdam's state gives SparseAdam's steps
    torch.testing.assert_close(run(LazyAdam, their_state)[0], run(torch.optim.SparseAdam, their_state)[0],
                               rtol=1e-6, atol=1e-7)


def test_lazy_adam_leaves_undrawn_rows_and_refuses_dense_gradients():
    from flixrec.optim import LazyAdam

    table = torch.nn.Parameter(torch.ones(6, 2))
    opt = LazyAdam([table], lr=0.1)
    torch.nn.functional.embedding(torch.tensor([4, 1, 4]), table, sparse=True).sum().backward()
    opt.step()
    moved = (table.detach() != 1).any(1)
    assert moved.tolist() == [False, True, False, False, True, False]
    assert torch.equal(opt.state[table]["exp_avg"][[0, 2, 3, 5]], torch.zeros(4, 2))
    table.grad = torch.ones(6, 2)
    with pytest.raises(RuntimeError, match="dense gradients"):
        opt.step()


def test_sparse_rows_adam_follows_the_scheduler_and_restores_its_state():
    module = sparse_module("gmf")
    opt = module.configure_optimizers()
    scheduler = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5)
    users, items = torch.tensor([0, 3]), torch.tensor([[1, 2], [4, 5]])
    module.training_loss({"users": users, "items": items}).backward()
    opt.step()
    scheduler.step()
    assert all(g["lr"] == pytest.approx(5e-3) for part in [opt] for g in part.param_groups)
    opt.step()  # the parts take the group's learning rate at each step
    assert all(g["lr"] == pytest.approx(5e-3) for part in opt.parts for g in part.param_groups)
    fresh = sparse_module("gmf").configure_optimizers()
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["lr"] == pytest.approx(5e-3)
    for mine, theirs in zip(fresh.parts, opt.parts):
        assert mine.state_dict()["state"].keys() == theirs.state_dict()["state"].keys()
        for k, state in theirs.state_dict()["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(mine.state_dict()["state"][k][name], value)


@pytest.mark.parametrize("optimizer, message", [
    (partial(torch.optim.Adam, lr=1e-3, weight_decay=1e-4), "weight_decay"),
    (partial(torch.optim.Adam, lr=1e-3, amsgrad=True), "not model.optimizer.amsgrad"),
    (partial(torch.optim.SGD, lr=0.1, momentum=0.9), "torch.optim.Adam or plain torch.optim.SGD"),
])
def test_sparse_embeddings_refuse_optimizers_that_cannot_take_them(optimizer, message):
    module = RecModule(GMF(U, I), optimizer=optimizer, sparse_embeddings=True)
    with pytest.raises(ConfigError, match=message):
        module.configure_optimizers()


def test_sparse_embeddings_with_plain_sgd_drop_fused_and_step():
    module = RecModule(GMF(U, I), optimizer=partial(torch.optim.SGD, lr=0.1, fused=True), sparse_embeddings=True)
    opt = module.configure_optimizers()
    assert type(opt) is torch.optim.SGD and not opt.defaults.get("fused")
    before = module.net.user_emb.weight.detach().clone()
    module.training_loss({"users": torch.tensor([2]), "items": torch.tensor([[1, 3]])}).backward()
    opt.step()
    moved = (module.net.user_emb.weight.detach() != before).any(1)
    assert moved.tolist() == [u == 2 for u in range(U)]


def last_weights(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("model", ["neumf", "svd"])  # svd: with its learning-rate schedule
def test_sparse_embeddings_train_checkpoint_evaluate_and_resume(model, make_cfg):
    sparse = [f"model={model}", "model.sparse_embeddings=true"]
    cfg = make_cfg([*sparse, "trainer.max_epochs=3"], run=f"train-sparse-{model}")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    m = json.loads((run / "metrics.json").read_text())
    assert m["val"]["hr@10"] > 0.3, m["val"]  # learns: chance is 10/101
    eval_cfg = make_cfg([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"], config_name="evaluate",
                        run=f"eval-sparse-{model}")
    evaluate(eval_cfg)
    assert json.loads((Path(eval_cfg.paths.output_dir) / "metrics.json").read_text())["test"] == m["test"]
    # a run resumed from last.ckpt for a 4th epoch ends where an uninterrupted 4-epoch run does:
    # the optimizer's parts (moments, steps) and its learning rate come back
    resumed = make_cfg([*sparse, "trainer.max_epochs=4", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"],
                       run=f"resume-sparse-{model}")
    train(resumed)
    whole = make_cfg([*sparse, "trainer.max_epochs=4"], run=f"whole-sparse-{model}")
    train(whole)
    got, want = last_weights(Path(resumed.paths.output_dir)), last_weights(Path(whole.paths.output_dir))
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)
    # a checkpoint resumes only with the setting it was trained with
    switched = make_cfg([f"model={model}", "trainer.max_epochs=4",
                         f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run=f"switched-{model}")
    with pytest.raises(ConfigError, match="model.sparse_embeddings: True in the checkpoint, False now"):
        train(switched)
