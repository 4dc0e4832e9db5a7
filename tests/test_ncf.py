"""data=ncf-ml-1m: the NCF authors' pre-split files, scored on exactly their candidates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from flixrec.data.ncf import NCFReader, read_ncf_negatives
from flixrec.errors import ConfigError, DataError
from flixrec.run import evaluate, train
from tests.conftest import shared_data

N_NEG = 10


def write_ncf(root: Path, train: dict[int, list[int]], test: dict[int, int],
              negatives: dict[int, list[int]], prefix: str = "ml-1m") -> None:
    """NCF-format files: training ratings at times 1, 2, ... in list order, test at time 10^9."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{prefix}.train.rating").write_text("".join(
        f"{u}\t{i}\t4\t{t + 1}\n" for u, items in train.items() for t, i in enumerate(items)))
    (root / f"{prefix}.test.rating").write_text("".join(f"{u}\t{i}\t5\t1000000000\n" for u, i in test.items()))
    (root / f"{prefix}.test.negative").write_text("".join(
        f"({u},{test[u]})\t" + "\t".join(map(str, negs)) + "\n" for u, negs in negatives.items()))


def small_ncf(root: Path, users: int = 30, items: int = 60, seed: int = 0) -> tuple[dict, dict, dict]:
    rng = np.random.default_rng(seed)
    train, test, negatives = {}, {}, {}
    for u in range(users):
        perm = rng.permutation(items).tolist()
        train[u], test[u], negatives[u] = perm[:15], perm[15], perm[16:16 + N_NEG]
    write_ncf(root, train, test, negatives)
    return train, test, negatives


def setup_dm(make_cfg, root: Path, *overrides: str):
    cfg = make_cfg(["data=ncf-ml-1m", f"data.root={root}", f"data.num_test_negatives={N_NEG}",
                    "model=gmf", "model.net.dim=8", *overrides])
    dm = instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")
    return cfg, dm


def original(dm, users, items):
    t = dm.table
    return t.user_ids[users.numpy()], t.item_ids[items.numpy()]


def test_test_positives_and_candidates_are_the_files(make_cfg, tmp_path):
    train, test, negatives = small_ncf(tmp_path / "ncf")
    _, dm = setup_dm(make_cfg, tmp_path / "ncf")
    users, cands = original(dm, dm.eval_users[:, None], dm.test_items)
    assert len(users) == 30
    for u, row in zip(users[:, 0].tolist(), cands.tolist()):
        assert row == [test[u]] + negatives[u]   # the file's test item, then its candidates in order
    # validation: each user's latest training rating, held out of training like the test item
    vu, vi = original(dm, dm.eval_users, dm.val_items[:, 0])
    assert all(i == train[u][-1] for u, i in zip(vu.tolist(), vi.tolist()))
    tu, ti = original(dm, dm.train_users, dm.train_items)
    trained = set(zip(tu.tolist(), ti.tolist()))
    assert len(trained) == 30 * 14
    assert not any((u, test[u]) in trained or (u, train[u][-1]) in trained for u in test)
    # validation candidates are sampled as usual: distinct movies the user never rated
    val = dm.val_items[:, 1:]
    assert val.shape == (30, N_NEG) and (val.sort(1).values.diff(1) != 0).all()


def test_ncf_run_trains_and_evaluate_reproduces_it(make_cfg, tmp_path):
    small_ncf(tmp_path / "ncf")
    cfg = make_cfg(["data=ncf-ml-1m", f"data.root={tmp_path / 'ncf'}", f"data.num_test_negatives={N_NEG}",
                    "model=gmf", "model.ks=[5,10]"], run="train")
    train(cfg)
    run = Path(cfg.paths.output_dir)
    m = json.loads((run / "metrics.json").read_text())
    assert m["data"] == "ncf-ml-1m" and m["data_stats"]["eval_users"] == 30
    eval_cfg = make_cfg([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"], config_name="evaluate", run="eval")
    evaluate(eval_cfg)
    assert json.loads((Path(eval_cfg.paths.output_dir) / "metrics.json").read_text())["test"] == m["test"]


def test_experiment_ncf_ml1m_takes_the_authors_files(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=ncf_ml1m", "data=ncf-ml-1m", f"data.root={tmp_path}"])
    assert cfg.data.name == "ncf-ml-1m" and cfg.data.split == "ncf"
    assert cfg.data.num_test_negatives == 99 and cfg.model.net.gmf_dim == 8


@pytest.mark.parametrize("damage, message, line", [
    (lambda t, n: n.__setitem__(3, n[3][:-1]), "10 whole-number candidates", 4),          # a short line
    (lambda t, n: n.__setitem__(5, n[5][:2] + ["x"] + n[5][3:]), "whole-number candidates", 6),
    (lambda t, n: n.__setitem__(2, [t[2][0]] + n[2][1:]), "a movie the user rated", 3),       # a training movie
    (lambda t, n: n.__setitem__(6, [t[6][-1]] + n[6][1:]), "a movie the user rated", 7),      # their validation movie
    (lambda t, n: n.__setitem__(8, n[8] + [n[9][0]]), "10 whole-number candidates", 9),       # a longer line
    (lambda t, n: n.__setitem__(4, [n[4][1]] + n[4][1:]), "listed twice", 5),
    (lambda t, n: n.__setitem__(1, [999] + n[1][1:]), "not a movie of the rating files", 2),
])
def test_bad_negatives_file_names_line_and_problem(make_cfg, tmp_path, damage, message, line):
    train, test, negatives = small_ncf(tmp_path / "ncf")
    negatives = {u: list(v) for u, v in negatives.items()}
    damage(train, negatives)
    write_ncf(tmp_path / "ncf", train, test, negatives)
    with pytest.raises(DataError, match=message) as err:
        setup_dm(make_cfg, tmp_path / "ncf")
    assert err.value.line == line and "ml-1m.test.negative" in str(err.value)


def test_own_test_movie_among_candidates_is_replaced_by_an_unseen_one(make_cfg, tmp_path, caplog):
    train, test, negatives = small_ncf(tmp_path / "ncf")
    negatives[3] = negatives[3][:4] + [test[3]] + negatives[3][5:]
    write_ncf(tmp_path / "ncf", train, test, negatives)
    _, dm = setup_dm(make_cfg, tmp_path / "ncf")
    users, cands = original(dm, dm.eval_users[:, None], dm.test_items)
    row = cands[users[:, 0].tolist().index(3)].tolist()
    assert row[0] == test[3] and row[1:5] + row[6:] == negatives[3][:4] + negatives[3][5:]
    assert row[5] not in set(train[3]) | {test[3]} | set(row[1:5] + row[6:])
    assert dm.data_stats()["ncf_candidates_replaced"] == 1
    assert "own test movie among the candidates on 1 of the 30 lines" in caplog.text


def test_negatives_file_of_another_test_item_or_size_is_refused(make_cfg, tmp_path):
    train, test, negatives = small_ncf(tmp_path / "ncf")
    wrong = dict(test)
    wrong[7] = negatives[7][0]
    (tmp_path / "ncf" / "ml-1m.test.negative").write_text("".join(
        f"({u},{wrong[u]})\t" + "\t".join(map(str, negs)) + "\n" for u, negs in negatives.items()))
    with pytest.raises(DataError, match="not the user's test rating") as err:
        setup_dm(make_cfg, tmp_path / "ncf")
    assert err.value.line == 8
    write_ncf(tmp_path / "ncf", train, test, negatives)
    with pytest.raises(ConfigError, match="set data.num_test_negatives=10"):
        setup_dm(make_cfg, tmp_path / "ncf", "data.num_test_negatives=12")
    (tmp_path / "ncf" / "ml-1m.test.negative").unlink()
    with pytest.raises(DataError, match="not found"):
        setup_dm(make_cfg, tmp_path / "ncf")


def test_first_bad_line_in_file_order_is_named(make_cfg, tmp_path):
    train, test, negatives = small_ncf(tmp_path / "ncf")
    negatives[9] = [999] + negatives[9][1:]               # line 10: an unknown movie
    negatives[4] = [negatives[4][1]] + negatives[4][1:]   # line 5: listed twice
    write_ncf(tmp_path / "ncf", train, test, negatives)
    with pytest.raises(DataError, match="listed twice") as err:
        setup_dm(make_cfg, tmp_path / "ncf")
    assert err.value.line == 5


def test_line_numbers_follow_the_file_not_the_users(make_cfg, tmp_path):
    # lines in reverse user order, after an unknown user's line and a blank line: the first
    # bad line of the FILE (user 20's, line 12) is named, not the first bad user (user 3)
    train, test, negatives = small_ncf(tmp_path / "ncf")
    negatives[3] = [999] + negatives[3][1:]
    negatives[20] = [train[20][0]] + negatives[20][1:]
    order = sorted(negatives, reverse=True)
    body = "".join(f"({u},{test[u]})\t" + "\t".join(map(str, negatives[u])) + "\n" for u in order)
    path = tmp_path / "ncf" / "ml-1m.test.negative"
    path.write_text("(500,1)\t" + "\t".join(map(str, range(2, 12))) + "\n\n" + body)
    with pytest.raises(DataError, match="a movie the user rated") as err:
        setup_dm(make_cfg, tmp_path / "ncf")
    assert err.value.line == 2 + order.index(20) + 1 == 12  # two lines, then users 29, 28, ...


@pytest.mark.parametrize("text, message, line", [
    ("\n(0,1)\n(1,2)\n", "no candidates", 2),
    ("(0,1)\t2\t3\n(1,2)\t3\t99999999999999999999\n", "candidate 2 is '99999999999999999999'", 2),
    # a form feed is part of its line, not a line break: line 2 is bad, and named as line 2
    ("(0,1)\t2\t3\n(1,2)\t3\x0c\t4\n(2,3)\t4\t5\n", r"candidate 1 is '3\\x0c'", 2),
])
def test_unreadable_negatives_lines(tmp_path, text, message, line):
    path = tmp_path / "ml-1m.test.negative"
    path.write_text(text, encoding="latin-1")
    with pytest.raises(DataError, match=message) as err:
        read_ncf_negatives(path)
    assert err.value.line == line


def test_trailing_tabs_and_blank_lines_are_ignored_and_unknown_users_skipped(make_cfg, tmp_path):
    train, test, negatives = small_ncf(tmp_path / "ncf")
    write_ncf(tmp_path / "ncf", train, test, negatives)
    path = tmp_path / "ncf" / "ml-1m.test.negative"
    extra = "(500,1)\t" + "\t".join(map(str, range(2, 12))) + "\n"   # a user the table lacks
    path.write_text(extra + "\n" + path.read_text().replace("\n", "\t\n"))
    _, dm = setup_dm(make_cfg, tmp_path / "ncf")
    users, cands = original(dm, dm.eval_users[:, None], dm.test_items)
    assert all(row == [test[u]] + negatives[u] for u, row in zip(users[:, 0].tolist(), cands.tolist()))
    # a second line for a known user is named by its own line number, past the unknown user
    path.write_text(extra + path.read_text() + f"(5,{test[5]})\t" + "\t".join(map(str, negatives[5])) + "\n")
    with pytest.raises(DataError, match="user 5 has a second line") as err:
        setup_dm(make_cfg, tmp_path / "ncf")
    assert err.value.line == 34  # 2 extra lines, a blank one, 30 users, then the repeat


def test_subsets_are_refused_with_the_ncf_split(make_cfg, tmp_path):
    small_ncf(tmp_path / "ncf")
    for subset in (["data/subset=sample_users", "data.subset.n_users=5"], ["data.subset.min_rating=4"]):
        with pytest.raises(InstantiationException) as err:  # the CLI reports the cause alone
            setup_dm(make_cfg, tmp_path / "ncf", *subset)
        assert isinstance(err.value.__cause__, ConfigError)
        assert "use data/subset=full" in str(err.value.__cause__)


def test_missing_rating_files_are_named(tmp_path):
    with pytest.raises(DataError, match="lacks ml-1m.train.rating and ml-1m.test.rating"):
        NCFReader().files(tmp_path)


def test_ncf_split_needs_ncf_files(make_cfg):
    cfg = make_cfg(["data.split=ncf"])
    dm = instantiate(cfg.data, _convert_="partial")
    with pytest.raises(ConfigError, match="data=ncf-ml-1m"):
        dm.setup("fit")


def test_real_ncf_test_files_drive_the_test_candidates(make_cfg, tmp_path):
    """The authors' real ml-1m.test.rating and .test.negative (their ml-1m.train.rating is not in
    the shared data: a training file is made up for the first 40 users, avoiding each user's
    test movie and candidates)."""
    real = shared_data() / "ncf-ml-1m"
    users, items, candidates, lines = read_ncf_negatives(real / "ml-1m.test.negative")
    assert candidates.shape == (6040, 99) and (users == np.arange(6040)).all()
    assert (lines == np.arange(1, 6041)).all()
    test_lines = (real / "ml-1m.test.rating").read_text().splitlines()
    assert [tuple(map(int, line.split("\t")[:2])) for line in test_lines] == list(zip(users, items))

    keep = 40
    listed = set(items[:keep].tolist()) | set(candidates[:keep].ravel().tolist())
    unlisted = [i for i in range(3706) if i not in listed]
    rng = np.random.default_rng(0)
    train = {u: rng.choice(unlisted, 20, replace=False).tolist() for u in range(keep)}
    train[9999] = sorted(listed)  # one user who rated every listed movie, so all are in the table
    root = tmp_path / "real"
    root.mkdir()
    (root / "ml-1m.train.rating").write_text("".join(
        f"{u}\t{i}\t4\t{t + 1}\n" for u, its in train.items() for t, i in enumerate(its)))
    (root / "ml-1m.test.rating").write_text("\n".join(test_lines[:keep]) + "\n")
    (root / "ml-1m.test.negative").symlink_to(real / "ml-1m.test.negative")  # all 6040 lines
    cfg = make_cfg(["data=ncf-ml-1m", f"data.root={root}", "model=gmf"])
    dm = instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")
    got_users, got = original(dm, dm.eval_users[:, None], dm.test_items)
    assert got_users[:, 0].tolist() == list(range(keep))
    assert (got[:, 0] == items[:keep]).all()
    # the authors' file lists some users' own test movie among their candidates (line 13 is
    # the first); only those cells differ, each now a movie the user never rated
    own = candidates[:keep] == items[:keep, None]
    assert own.sum() == dm.ncf_candidates_replaced == dm.data_stats()["ncf_candidates_replaced"] >= 1
    assert own[12].any() and (got[:, 1:] == candidates[:keep])[~own].all()
    assert (got[:, 1:][own] != items[:keep][own.any(1)]).all()
    assert all(len(set(row)) == 100 for row in got.tolist())


def test_download_checks_the_real_test_files_git_blob_ids():
    from flixrec.data.download import NCF_BLOBS, git_blob_id

    real = shared_data() / "ncf-ml-1m"
    for name in ("ml-1m.test.rating", "ml-1m.test.negative"):
        assert git_blob_id(real / name) == NCF_BLOBS[name]
