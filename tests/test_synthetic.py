"""The synthetic generator writes the exact Kaggle Netflix layout, deterministically, atomically,
with a planted preference model that the recorded truth reproduces."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from flixrec.data import synthetic
from flixrec.data.synthetic import ensure_synthetic, generate, read_marker, simulate, true_scores

PARAMS = dict(num_users=400, num_items=300, mean_ratings_per_user=25, seed=3)
RATING_LINE = re.compile(rb"^\d+,[1-5],\d{4}-\d{2}-\d{2}$")
MOVIE_LINE = re.compile(rb"^(\d+):$")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "set"
    generate(out, **PARAMS)
    return out


def parse_files(root: Path) -> dict:
    """An independent, slow reference parse of combined_data_*.txt (fine for a few thousand lines)."""
    movies, customers, stars, dates, first_movie_of_file = [], [], [], [], []
    for f in sorted(root.glob("combined_data_*.txt")):
        lines = f.read_bytes().split(b"\n")
        assert lines[-1] == b"", "files end with a newline"
        lines = lines[:-1]
        m = MOVIE_LINE.match(lines[0])
        assert m, f"{f.name} starts with an M: line"
        first_movie_of_file.append(int(m.group(1)))
        movie = None
        for line in lines:
            if (m := MOVIE_LINE.match(line)):
                movie = int(m.group(1))
                continue
            assert RATING_LINE.match(line), line
            c, r, d = line.split(b",")
            movies.append(movie), customers.append(int(c)), stars.append(int(r)), dates.append(d.decode())
    return {"movies": np.array(movies), "customers": np.array(customers), "stars": np.array(stars),
            "dates": np.array(dates, dtype="datetime64[D]"), "first_movie_of_file": first_movie_of_file}


def test_layout_is_exactly_kaggle(data: Path) -> None:
    names = sorted(p.name for p in data.glob("combined_data_*.txt"))
    assert names == [f"combined_data_{i}.txt" for i in range(1, 5)]
    for f in data.glob("combined_data_*.txt"):
        assert b"\r" not in f.read_bytes()
    headers = [int(m.group(1)) for f in sorted(data.glob("combined_data_*.txt"))
               for m in map(MOVIE_LINE.match, f.read_bytes().split(b"\n")) if m]
    assert headers == sorted(set(headers)), "each movie once, files and blocks in movie id order"
    assert 1 <= headers[0] and headers[-1] <= PARAMS["num_items"]
    parsed = parse_files(data)
    stats = read_marker(data)["stats"]
    assert len(parsed["stars"]) == stats["ratings"]
    # files are split by movie id with roughly equal numbers of ratings
    sizes = [f.stat().st_size for f in sorted(data.glob("combined_data_*.txt"))]
    assert max(sizes) < 2 * min(sizes)


def test_titles_file_is_latin1_with_commas_and_nulls(data: Path) -> None:
    raw = (data / "movie_titles.csv").read_bytes()
    assert b"\r" not in raw
    lines = raw.decode("latin-1").split("\n")[:-1]
    assert len(lines) == PARAMS["num_items"]
    fields = [line.split(",", 2) for line in lines]
    assert [int(f[0]) for f in fields] == list(range(1, PARAMS["num_items"] + 1))
    assert all(re.fullmatch(r"\d{4}|NULL", f[1]) and f[2] for f in fields)
    assert any(f[1] == "NULL" for f in fields)
    assert any("," in f[2] for f in fields)


def test_dates_ids_and_pairs(data: Path) -> None:
    parsed = parse_files(data)
    assert parsed["dates"].min() >= np.datetime64("1999-11-11")
    assert parsed["dates"].max() <= np.datetime64("2005-12-31")
    # a rating is never before 1 January of the movie's release year
    years = {int(f[0]): f[1] for f in (line.split(",", 2) for line in
                                         (data / "movie_titles.csv").read_text("latin-1").splitlines())}
    release = np.array([years[m] for m in parsed["movies"]])
    known = release != "NULL"
    jan1 = release[known].astype("datetime64[Y]").astype("datetime64[D]")
    assert (parsed["dates"][known] >= jan1).all()
    customers = np.unique(parsed["customers"])
    assert len(customers) == PARAMS["num_users"]
    assert customers.min() >= 1 and customers.max() <= synthetic.MAX_CUSTOMER_ID
    assert customers.max() > 10 * PARAMS["num_users"], "ids are sparse, like Netflix's"
    pairs = parsed["customers"] * 100_000 + parsed["movies"]
    assert len(np.unique(pairs)) == len(pairs), "no user rates a movie twice"
    per_user = np.bincount(np.unique(parsed["customers"], return_inverse=True)[1])
    assert per_user.min() >= synthetic.MIN_RATINGS_PER_USER


def test_skewed_popularity_and_netflix_like_stars(data: Path) -> None:
    parsed = parse_files(data)
    per_movie = np.sort(np.bincount(parsed["movies"], minlength=PARAMS["num_items"] + 1)[1:])[::-1]
    top_tenth = per_movie[: len(per_movie) // 10].sum() / per_movie.sum()
    assert top_tenth > 0.25, f"top 10% of movies hold only {top_tenth:.0%} of ratings"
    assert per_movie[0] > 4 * np.median(per_movie)
    shares = np.bincount(parsed["stars"], minlength=6)[1:] / len(parsed["stars"])
    np.testing.assert_allclose(shares, synthetic.STAR_SHARES, atol=0.02)


def test_same_parameters_give_identical_bytes(data: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, **PARAMS)
    for name in ["movie_titles.csv", synthetic.TRUTH] + [f"combined_data_{i}.txt" for i in range(1, 5)]:
        assert (again / name).read_bytes() == (data / name).read_bytes(), name
    other = tmp_path / "other"
    generate(other, **{**PARAMS, "seed": 4})
    assert (other / "combined_data_1.txt").read_bytes() != (data / "combined_data_1.txt").read_bytes()


def test_simulate_matches_the_files(data: Path) -> None:
    sim = simulate(**PARAMS)
    parsed = parse_files(data)
    np.testing.assert_array_equal(parsed["customers"], sim.customer_ids[sim.users])
    np.testing.assert_array_equal(parsed["movies"], sim.items.astype(np.int64) + 1)
    np.testing.assert_array_equal(parsed["stars"], sim.stars)
    np.testing.assert_array_equal(parsed["dates"], sim.dates())


def test_true_scores_shape_and_alignment(data: Path) -> None:
    truth = np.load(data / synthetic.TRUTH)
    cust, movies = truth["customer_ids"], truth["movie_ids"]
    u, c = cust[:7, None], np.stack([movies[[0, 5, 9]]] * 7)  # (7, 1) x (7, 3)
    scores = true_scores(data, u, c)
    assert scores.shape == (7, 3) and scores.dtype == np.float32
    for i in range(7):
        for j, m in enumerate([0, 5, 9]):
            expected = truth["movie_biases"][m] + truth["taste_strength"] * (
                truth["user_factors"][i] @ truth["movie_factors"][m])
            assert scores[i, j] == pytest.approx(expected, rel=1e-5, abs=1e-5)
    # ids, not rows: a shuffled id order gives the same scores, permuted
    perm = np.random.default_rng(0).permutation(7)
    np.testing.assert_array_equal(true_scores(data, u[perm], c), scores[perm])
    with pytest.raises(KeyError):
        true_scores(data, np.array([0]), np.array([1]))


def test_rated_movies_score_higher_than_unrated(data: Path) -> None:
    parsed = parse_files(data)
    truth = np.load(data / synthetic.TRUTH)
    scores = true_scores(data, truth["customer_ids"][:, None], truth["movie_ids"][None, :])
    rated = np.zeros(scores.shape, bool)
    row_of = {c: i for i, c in enumerate(truth["customer_ids"].tolist())}
    rated[[row_of[c] for c in parsed["customers"].tolist()], parsed["movies"] - 1] = True
    gap = scores[rated].mean() - scores[~rated].mean()
    assert gap > 1.0, f"rated movies score only {gap:.2f} higher"
    # and per user, not just through popular movies: within-user centring keeps the gap
    centred = scores - scores.mean(axis=1, keepdims=True)
    assert centred[rated].mean() > centred[~rated].mean() + 1.0


def test_ensure_reuses_and_regenerates(tmp_path: Path) -> None:
    out = tmp_path / "set"
    small = dict(num_users=60, num_items=40, mean_ratings_per_user=8)
    assert ensure_synthetic(out, **small) == out
    marker_time = (out / synthetic.MARKER).stat().st_mtime_ns
    ensure_synthetic(out, **small)  # same parameters (defaults filled in): reused
    ensure_synthetic(out, **{**small, "seed": 0, "num_files": 4})
    assert (out / synthetic.MARKER).stat().st_mtime_ns == marker_time
    ensure_synthetic(out, **{**small, "num_users": 70})
    marker = json.loads((out / synthetic.MARKER).read_text())
    assert marker["params"]["num_users"] == 70 and marker["stats"]["users"] == 70
    assert not list(tmp_path.glob(".set.tmp-*")) and not list(tmp_path.glob(".set.old-*"))
    with pytest.raises(TypeError):
        ensure_synthetic(out, num_userz=5)


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "set"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "_write_titles", boom)
    with pytest.raises(KeyboardInterrupt):
        generate(out, num_users=30, num_items=20, mean_ratings_per_user=6)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_to_replace_other_folders(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate(tmp_path / "mine", num_users=30, num_items=20, mean_ratings_per_user=6)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_netflix_reader_parses_exactly_the_generated_ratings(data: Path) -> None:
    from flixrec.data.netflix import NetflixReader

    table = NetflixReader().parse(data)
    sim = simulate(**PARAMS)
    np.testing.assert_array_equal(table.user_ids[table.users], sim.customer_ids[sim.users])
    np.testing.assert_array_equal(table.item_ids[table.items], sim.items.astype(np.int64) + 1)
    np.testing.assert_array_equal(table.ratings, sim.stars)
    days_since_1970 = (sim.dates() - np.datetime64("1970-01-01")).astype(np.int64)
    np.testing.assert_array_equal(table.days(), days_since_1970)
    assert table.item_titles[0] == sim.titles[int(table.item_ids[0]) - 1]


def test_cli_prints_stats(tmp_path: Path, capsys) -> None:
    synthetic.main(["--out", str(tmp_path / "cli"), "--users", "50", "--movies", "30",
                    "--ratings-per-user", "7", "--seed", "1"])
    stats = json.loads(capsys.readouterr().out)
    assert stats["users"] == 50 and stats["ratings"] == read_marker(tmp_path / "cli")["stats"]["ratings"]
