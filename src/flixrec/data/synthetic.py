"""Synthetic ratings in the exact Kaggle Netflix Prize layout, with a known preference model.

The output directory looks like the Kaggle download: `combined_data_1.txt` .. `combined_data_N.txt`
(movies split across files in id order; a line `M:` opens the ratings of movie M, each following
line is `CustomerID,Rating,YYYY-MM-DD`, LF endings, users of a movie in no particular order) and a
latin-1 `movie_titles.csv` (`MovieID,YearOfRelease,Title`, unquoted commas in some titles, a few
`NULL` years). Next to them, `truth.npz` holds the model that generated the data and
`synthetic.json` the parameters and statistics; the latter is written last and marks completion.

The planted model: user u has a taste vector p_u, movie i a taste vector q_i and a popularity bias
b_i ~ N(0, popularity_skew^2) (so exp(b_i) is log-normal). Both vectors have i.i.d. N(0, d^-1/2)
entries, so p_u.q_i has unit variance whatever the dimension d. User u rates n_u movies (n_u
log-normal, at least 5, at most num_items), drawn without replacement with probability
proportional to exp(s_ui), s_ui = b_i + taste_strength * p_u.q_i (the Gumbel-top-k trick: the n_u
largest s_ui + Gumbel noise). Stars threshold a latent affinity (user offset + movie quality +
p_u.q_i + noise) at quantiles matching the Netflix star shares. Dates fall in the user's active
window and after the start of the movie's release year, 1999-11-11 .. 2005-12-31.

Everything is drawn from numpy Generators seeded by (seed, purpose, chunk), so the output is a
function of the parameters alone (see `simulate`). Users are processed in chunks that bound the
(users, movies) score matrix to `_CELLS_PER_CHUNK` cells; lines are formatted as byte matrices, so
100M ratings take minutes and a few GB, not hours.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from filelock import FileLock

from flixrec.data.ratings import compact_item_dtype

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when the same parameters would produce different data
MARKER = "synthetic.json"
TRUTH = "truth.npz"
FIRST_DAY = np.datetime64("1999-11-11", "D")
LAST_DAY = np.datetime64("2005-12-31", "D")
NUM_DAYS = int((LAST_DAY - FIRST_DAY).astype(int)) + 1
MAX_CUSTOMER_ID = 2_649_429
STAR_SHARES = (0.046, 0.101, 0.287, 0.336, 0.230)  # Netflix Prize training set, 1..5 stars
MIN_RATINGS_PER_USER = 5

_CELLS_PER_CHUNK = 1 << 24  # score-matrix cells per user chunk: ~64 MB of float32 per buffer
_LINES_PER_WRITE = 1 << 21
_WORKERS = min(2, os.cpu_count() or 1)  # two chunks in flight: ~0.5 GB of buffers
_ID_DIGITS = 7  # MAX_CUSTOMER_ID has 7 digits


@dataclass
class Simulation:
    """A generated data set in memory. Rows are sorted by movie, then by user row.

    customer_ids: int64 (U,), the customer id of each user row (random, distinct, unsorted)
    users: int32 (R,) user rows; items: int16/int32 (R,) movie index (= movie id - 1)
    stars: int8 (R,) in 1..5; days: int16 (R,) days since FIRST_DAY
    years: int16 (I,) release year, 0 where `movie_titles.csv` says NULL; titles: I strings
    user_factors: float32 (U, d); movie_factors: float32 (I, d); movie_biases: float32 (I,)
    """

    customer_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    stars: np.ndarray
    days: np.ndarray
    years: np.ndarray
    titles: list[str]
    user_factors: np.ndarray
    movie_factors: np.ndarray
    movie_biases: np.ndarray
    taste_strength: float

    @property
    def movie_ids(self) -> np.ndarray:
        return np.arange(1, len(self.years) + 1, dtype=np.int64)

    def dates(self) -> np.ndarray:
        """Rating dates as datetime64[D] (R,)."""
        return FIRST_DAY + self.days.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# public API


def generate(
    out: Path,
    num_users: int = 3000,
    num_items: int = 1000,
    mean_ratings_per_user: float = 60.0,
    taste_dim: int = 16,
    taste_strength: float = 2.0,
    popularity_skew: float = 1.5,
    seed: int = 0,
    num_files: int = 4,
) -> dict:
    """Write a synthetic data set to `out` (see the module docstring) and return its statistics.

    Deterministic: the same parameters give byte-identical files (on another CPU or BLAS build,
    float rounding could flip a near-tied choice in rare cases). About num_users *
    mean_ratings_per_user ratings (the realised mean is within ~1% of the target unless capped
    by num_items); 480,189 users x 17,770 movies x 209 gives the Netflix Prize's 100M.
    Atomic: files are written into a temporary sibling directory that replaces `out` only when
    complete. An existing `out` is replaced only if it is an earlier synthetic data set (holds
    `synthetic.json`) or empty; anything else raises FileExistsError.
    """
    out = Path(out)
    params = _params(locals())
    if out.exists() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(f"{out} exists and is not a synthetic data set; refusing to replace it")
    t0 = time.perf_counter()
    sim = simulate(**params)
    simulate_s = time.perf_counter() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = _write_ratings(tmp, sim, num_files)
        _write_titles(tmp / "movie_titles.csv", sim)
        np.savez(tmp / TRUTH, customer_ids=sim.customer_ids, movie_ids=sim.movie_ids,
                 user_factors=sim.user_factors, movie_factors=sim.movie_factors,
                 movie_biases=sim.movie_biases, taste_strength=np.float64(sim.taste_strength))
        stats = _stats(sim, files, tmp)
        stats["simulate_seconds"] = round(simulate_s, 2)
        stats["seconds"] = round(time.perf_counter() - t0, 2)
        marker = {"generator": __name__, "version": GENERATOR_VERSION, "params": params, "stats": stats}
        for name in files + ["movie_titles.csv", TRUTH]:
            _fsync(tmp / name)
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))  # last: marks the set complete
        _fsync(tmp / MARKER)
        if out.exists():
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("Generated %d synthetic ratings in %s (%.1f s)", stats["ratings"], out, stats["seconds"])
    return stats


def ensure_synthetic(out: Path, **params) -> Path:
    """Return `out` after making sure it holds a complete data set generated with `params`.

    Generates (via `generate`) only when `out` lacks `synthetic.json` or a file it lists, or it
    records other parameters (defaults filled in) or another generator version. A file lock
    next to `out` makes parallel callers generate once; while holding it, leftovers of killed
    generators are removed.
    """
    out = Path(out)
    params = _params({**params, "out": out})
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out.parent / f".{out.name}.lock")):
        marker = read_marker(out)
        wanted = (marker or {}).get("stats", {}).get("files", []) + ["movie_titles.csv", TRUTH]
        if (marker and marker.get("version") == GENERATOR_VERSION and marker.get("params") == params
                and all((out / f).is_file() for f in wanted)):
            return out
        for stale in out.parent.glob(f".{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if marker:
            log.info("Synthetic data in %s has other parameters; regenerating it", out)
        generate(out, **params)
    return out


def read_marker(out: Path) -> dict | None:
    """The parsed `synthetic.json` of a completed data set at `out`, or None."""
    try:
        return json.loads((Path(out) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def true_scores(root: Path, customer_ids: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """The generator's preference score b_i + taste_strength * p_u.q_i for (customer, movie) pairs.

    `customer_ids` and `movie_ids` are original ids (as in the files) of any shapes that broadcast,
    e.g. (U, 1) and (U, C); returns float32 of the broadcast shape. This is the score whose
    softmax chose what each user rated, so ranking by it is the oracle. Raises KeyError for ids
    the data set does not have.
    """
    truth = _load_truth(*_file_key(Path(root) / TRUTH))
    cust, movies = np.broadcast_arrays(np.asarray(customer_ids), np.asarray(movie_ids))
    rows_u = _lookup(truth["customer_order"], truth["customer_sorted"], cust.ravel(), "customer")
    rows_m = _lookup(truth["movie_order"], truth["movie_sorted"], movies.ravel(), "movie")
    out = np.empty(len(rows_u), np.float32)
    step = 1 << 20  # bounds the (pairs, d) gathers
    for a in range(0, len(out), step):
        u, m = rows_u[a:a + step], rows_m[a:a + step]
        dots = np.einsum("nd,nd->n", truth["user_factors"][u], truth["movie_factors"][m])
        out[a:a + step] = truth["movie_biases"][m] + truth["taste_strength"] * dots
    return out.reshape(cust.shape)


def simulate(
    num_users: int = 3000,
    num_items: int = 1000,
    mean_ratings_per_user: float = 60.0,
    taste_dim: int = 16,
    taste_strength: float = 2.0,
    popularity_skew: float = 1.5,
    seed: int = 0,
    num_files: int = 4,
) -> Simulation:
    """Draw a data set in memory (what `generate` writes). Deterministic in its arguments;
    `num_files` only affects the layout and is accepted so both take the same parameters."""
    if not 1 <= num_users <= MAX_CUSTOMER_ID:
        raise ValueError(f"num_users must be in 1..{MAX_CUSTOMER_ID}")
    if num_items < max(num_files, 1) or num_files < 1:
        raise ValueError("need num_files >= 1 and at least num_files movies")
    if taste_dim < 1 or mean_ratings_per_user < 1:
        raise ValueError("taste_dim and mean_ratings_per_user must be at least 1")
    U, I, d = num_users, num_items, taste_dim
    rng = _rng(seed, 0)
    customer_ids = rng.choice(MAX_CUSTOMER_ID, size=U, replace=False).astype(np.int64) + 1
    scale = np.float32(d ** -0.25)  # entries N(0, d^-1/2): p.q has unit variance
    user_factors = rng.standard_normal((U, d), dtype=np.float32) * scale
    movie_factors = rng.standard_normal((I, d), dtype=np.float32) * scale
    movie_biases = rng.standard_normal(I, dtype=np.float32) * np.float32(popularity_skew)
    counts = _ratings_per_user(rng, U, I, mean_ratings_per_user)
    years = _release_years(rng, I)
    # star model: popular movies are a little better, as in the real data
    user_offsets = rng.normal(0, 0.45, U).astype(np.float32)
    quality = (0.35 * movie_biases / max(popularity_skew, 1e-6) + rng.normal(0, 0.35, I)).astype(np.float32)
    starts, ends = _user_windows(rng, counts)
    available = _first_day_available(years)
    titles = _titles(rng, I)

    # Output position of each user's ratings: users in row order, so a stable sort by movie
    # leaves the users of a movie ordered by row, i.e. by nothing visible (rows are random ids).
    offsets = np.zeros(U + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    R = int(offsets[-1])
    users = np.empty(R, np.int32)
    items = np.empty(R, compact_item_dtype(I))
    latent = np.empty(R, np.float32)
    days = np.empty(R, np.int16)
    # Chunks of users with similar counts, so one partition width suits the whole chunk.
    order = np.argsort(counts, kind="stable")
    per_chunk = max(1, _CELLS_PER_CHUNK // I)

    def fill(c: int) -> None:
        # Chunks own disjoint output slices and their own streams, so running them on threads
        # (numpy releases the GIL in the heavy loops) does not change the result.
        rows = order[c * per_chunk:(c + 1) * per_chunk]
        sel_users, sel_items, dots = _choose(_rng(seed, 1, c), rows, counts[rows], user_factors,
                                             movie_factors, movie_biases, taste_strength)
        dest = np.repeat(offsets[rows], counts[rows]) + _ranks_within(counts[rows])
        crng = _rng(seed, 2, c)
        users[dest] = sel_users
        items[dest] = sel_items
        latent[dest] = (user_offsets[sel_users] + quality[sel_items] + np.float32(0.6) * dots
                        + crng.normal(0, 0.65, len(dest)).astype(np.float32))
        days[dest] = _rating_days(crng, starts[sel_users], ends[sel_users], available[sel_items])

    num_chunks = -(-U // per_chunk)
    with ThreadPoolExecutor(max_workers=min(_WORKERS, num_chunks)) as pool:
        list(pool.map(fill, range(num_chunks)))  # list() re-raises a worker's exception
    # Thresholds at the latent's quantiles reproduce the Netflix star shares exactly
    # (a strided sample keeps this O(R) cheap at 100M ratings).
    sample = latent[:: max(1, R // 2_000_000)]
    cuts = np.quantile(sample, np.cumsum(STAR_SHARES)[:-1]).astype(np.float32)
    stars = (np.searchsorted(cuts, latent) + 1).astype(np.int8)
    del latent
    perm = np.argsort(items, kind="stable")  # radix sort for int16: O(R)
    return Simulation(customer_ids=customer_ids, users=users[perm], items=items[perm],
                      stars=stars[perm], days=days[perm], years=years, titles=titles,
                      user_factors=user_factors, movie_factors=movie_factors,
                      movie_biases=movie_biases, taste_strength=float(taste_strength))


# ----------------------------------------------------------------------------------------------
# the model


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent stream per (seed, purpose, chunk), so chunking never changes other draws."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _ratings_per_user(rng: np.random.Generator, U: int, I: int, mean: float) -> np.ndarray:
    """Log-normal counts (sigma 1, like Netflix's long tail), clipped to [5, I], scaled by
    bisection so the clipped mean hits `mean` (or as close as the clipping allows)."""
    raw = rng.lognormal(0.0, 1.0, U)
    lo_n = min(MIN_RATINGS_PER_USER, I)

    def counts(m: float) -> np.ndarray:
        return np.clip(np.rint(raw * m), lo_n, I).astype(np.int64)

    lo, hi = 1e-3, float(I) * 1e3 / max(raw.min(), 1e-9)
    for _ in range(60):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if counts(mid).mean() < mean else (lo, mid)
    return counts(hi)


def _release_years(rng: np.random.Generator, I: int) -> np.ndarray:
    """Release years skewed to the recent (half the catalogue after ~1998), a few NULL (0)."""
    years = (2005 - np.floor(rng.exponential(10.0, I))).clip(1915, 2005).astype(np.int16)
    if I >= 20:  # the real file has 7 NULL years in 17,770
        years[rng.choice(I, size=max(1, I // 2000), replace=False)] = 0
    return years


def _first_day_available(years: np.ndarray) -> np.ndarray:
    """First possible rating day (days since FIRST_DAY) of each movie: 1 January of its year."""
    jan1 = (np.maximum(years, 1999).astype("int64") - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    day = (jan1 - FIRST_DAY).astype(np.int64)
    day[years == 0] = 0
    return np.clip(day, 0, NUM_DAYS - 1).astype(np.int32)


def _user_windows(rng: np.random.Generator, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each user's active days [start, end]: starts skewed late (Netflix grew), windows a year
    at the median, longer for heavy raters."""
    U = len(counts)
    starts = np.floor(rng.beta(3.0, 1.0, U) * NUM_DAYS).astype(np.int32).clip(0, NUM_DAYS - 1)
    length = 365 * rng.lognormal(0.0, 0.9, U) * (counts / np.median(counts)) ** 0.3
    ends = np.minimum(starts + np.rint(length).astype(np.int64), NUM_DAYS - 1).astype(np.int32)
    return starts, ends


def _rating_days(rng: np.random.Generator, starts: np.ndarray, ends: np.ndarray,
                 available: np.ndarray) -> np.ndarray:
    """Uniform day in [max(start, available), end]; after the user's window, up to LAST_DAY, when
    the movie appears only after the window closed."""
    lo = np.maximum(starts, available)
    hi = np.where(lo <= ends, ends, NUM_DAYS - 1)
    return (lo + np.floor(rng.random(len(lo)) * (hi - lo + 1))).astype(np.int16)


def _choose(rng: np.random.Generator, rows: np.ndarray, counts: np.ndarray, user_factors: np.ndarray,
            movie_factors: np.ndarray, movie_biases: np.ndarray,
            taste_strength: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Movies rated by users `rows` (counts[j] each): the top counts[j] of s_ui + Gumbel noise.

    Returns (user rows, movie indices, p_u.q_i) of the chosen pairs, user-major. The Gumbel noise
    comes from 23 random bits per cell, which truncates it at a 1e-7 tail probability.
    """
    c, I = len(rows), len(movie_biases)
    # one matmul gives s = b + taste_strength * p.q: [p, 1] @ [taste_strength * q, b]^T
    user_aug = np.hstack([user_factors[rows], np.ones((c, 1), np.float32)])
    movie_aug = np.hstack([np.float32(taste_strength) * movie_factors, movie_biases[:, None]])
    scores = user_aug @ movie_aug.T  # (c, I) float32
    bits = rng.bit_generator.random_raw((c * I + 1) // 2).view(np.uint32)[: c * I].reshape(c, I)
    bits >>= np.uint32(9)
    bits |= np.uint32(0x3F800000)
    keys = bits.view(np.float32)  # uniform in [1, 2)
    keys -= np.float32(1.0 - 2.0 ** -24)  # (0, 1): never log(0)
    np.log(keys, out=keys)
    np.negative(keys, out=keys)
    np.log(keys, out=keys)  # -Gumbel
    keys -= scores  # -(s + Gumbel): the chosen movies are the smallest keys
    del scores
    # Each row's cut is the value of its counts[j]-th smallest key: one partition at the widest
    # count, then a sort of that narrow slice (a single-kth partition is a fast SIMD kernel).
    width = int(counts.max())
    smallest = np.partition(keys, width - 1, axis=1)[:, :width] if width < I else keys
    cuts = np.sort(smallest, axis=1)[np.arange(c), counts - 1]
    del smallest
    sel_rows, sel_items = np.nonzero(keys <= cuts[:, None])
    # A tie at a row's cut selects too many; redo such (rare) rows with a stable sort, which
    # breaks ties by movie index, so the choice never depends on the sorting kernel.
    tied = np.flatnonzero(np.bincount(sel_rows, minlength=c) != counts)
    if len(tied):
        keep = ~np.isin(sel_rows, tied)
        extra_rows = np.repeat(tied, counts[tied])
        extra_items = np.concatenate([np.argsort(keys[r], kind="stable")[: counts[r]] for r in tied])
        sel_rows = np.concatenate([sel_rows[keep], extra_rows])
        sel_items = np.concatenate([sel_items[keep], extra_items])
        order = np.argsort(sel_rows, kind="stable")  # back to user-major
        sel_rows, sel_items = sel_rows[order], sel_items[order]
    sel_users = rows[sel_rows].astype(np.int32)
    dots = np.einsum("nd,nd->n", user_factors[sel_users], movie_factors[sel_items])
    return sel_users, sel_items, dots


def _ranks_within(counts: np.ndarray) -> np.ndarray:
    """[0..counts[0]-1, 0..counts[1]-1, ...] as int64."""
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return np.arange(int(counts.sum()), dtype=np.int64) - starts


_WORDS = ("Night Summer Winter River City Love War Dream Shadow Road Stranger Heart King Queen Fire "
          "Island Secret Garden Blood Angel Devil Ghost Moon Storm Silence Journey Family Story "
          "Mystery Return Legend Empire Kingdom Highway Harbor Mountain Desert Ocean Detective "
          "Doctor Hunter Soldier Dancer Stranger Window Mirror Letter Promise Revenge").split()
_ADJECTIVES = ("Last Lost Dark Silent Broken Wild Hidden Golden Forgotten Crimson Secret Little Final "
               "Endless Deadly Perfect Electric Frozen Burning Sweet").split()
_ACCENTED = ("Caf\u00e9", "Am\u00e9lie", "Se\u00f1or", "No\u00ebl", "Fianc\u00e9e", "Na\u00efve")


def _titles(rng: np.random.Generator, I: int) -> list[str]:
    """Movie titles built from word lists: ~3% with a comma, ~2% with a latin-1 accent."""
    kind = rng.choice(6, size=I, p=[0.35, 0.25, 0.2, 0.1, 0.07, 0.03])
    w = rng.choice(len(_WORDS), size=(I, 3))
    a = rng.choice(len(_ADJECTIVES), size=I)
    accent = rng.random(I) < 0.02
    n = rng.integers(2, 8, size=I)
    titles = []
    for i in range(I):  # per movie, not per rating
        w0, w1, w2 = (_WORDS[j] for j in w[i])
        if accent[i]:
            w0 = _ACCENTED[int(w[i, 0]) % len(_ACCENTED)]
        adj = _ADJECTIVES[a[i]]
        titles.append((f"The {adj} {w0}", f"{w0} of the {w1}", f"{adj} {w0}",
                       f"{w0}: Season {n[i]}", f"{w0} {w1} {n[i]}", f"{w0}, {w1} and {w2}")[kind[i]])
    return titles


# ----------------------------------------------------------------------------------------------
# writing


def _write_ratings(out: Path, sim: Simulation, num_files: int) -> list[str]:
    """Write combined_data_*.txt: contiguous movie ranges with about equal numbers of ratings."""
    I = len(sim.years)
    counts = np.bincount(sim.items, minlength=I)
    bounds = np.zeros(I + 1, np.int64)
    np.cumsum(counts, out=bounds[1:])
    rated = np.flatnonzero(counts)  # a movie nobody rated gets no block (the real data has none)
    if len(rated) < num_files:
        raise ValueError(f"only {len(rated)} movies were rated: too few for {num_files} files")
    cut = np.searchsorted(bounds[rated + 1], np.arange(1, num_files) * (len(sim.items) / num_files))
    cut = np.maximum.accumulate(np.maximum(cut, np.arange(1, num_files)))
    cut = np.minimum(cut, len(rated) - num_files + np.arange(1, num_files))
    groups = np.split(rated, cut)
    id_digits, id_keep = _id_table(sim.customer_ids)
    date_chars = _date_table()
    names = []
    for f, movies in enumerate(groups, 1):
        name = f"combined_data_{f}.txt"
        with open(out / name, "wb") as fh:
            # blocks of whole movies of about _LINES_PER_WRITE lines each
            ends = bounds[movies + 1] - bounds[movies[0]]
            targets = np.arange(_LINES_PER_WRITE, ends[-1], _LINES_PER_WRITE)
            cuts = np.unique(np.searchsorted(ends, targets) + 1)
            for ms in np.split(movies, cuts[cuts < len(movies)]):
                a, b = int(bounds[ms[0]]), int(bounds[ms[-1] + 1])
                text, line_ends = _format_lines(sim.users[a:b], sim.stars[a:b], sim.days[a:b],
                                                id_digits, id_keep, date_chars)
                byte_at = np.concatenate([[0], line_ends])[bounds[ms] - a]
                byte_to = np.concatenate([byte_at[1:], [len(text)]])
                view = memoryview(text)
                fh.write(b"".join(p for m, s, e in zip(ms.tolist(), byte_at.tolist(), byte_to.tolist())
                                  for p in (b"%d:\n" % (m + 1), view[s:e])))
        names.append(name)
    return names


def _id_table(customer_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned ASCII digits (U, 7) of each customer id and a mask of its significant ones."""
    powers = 10 ** np.arange(_ID_DIGITS - 1, -1, -1, dtype=np.int64)
    digits = (customer_ids[:, None] // powers % 10 + 48).astype(np.uint8)
    keep = customer_ids[:, None] >= powers
    keep[:, -1] = True
    return digits, keep


def _date_table() -> np.ndarray:
    """ASCII `YYYY-MM-DD` (NUM_DAYS, 10) of each day since FIRST_DAY."""
    text = np.datetime_as_string(FIRST_DAY + np.arange(NUM_DAYS)).astype("S10")
    return text.view(np.uint8).reshape(NUM_DAYS, 10)


def _format_lines(users: np.ndarray, stars: np.ndarray, days: np.ndarray, id_digits: np.ndarray,
                  id_keep: np.ndarray, date_chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`CustomerID,Rating,YYYY-MM-DD\\n` lines as one uint8 array, and each line's end offset.

    Every line is laid out in a fixed 21-byte row, then the leading zeros of short ids are
    masked out, which concatenates the variable-length lines in one compaction.
    """
    n = len(users)
    rows = np.empty((n, _ID_DIGITS + 14), np.uint8)
    rows[:, :_ID_DIGITS] = id_digits[users]
    rows[:, _ID_DIGITS] = ord(",")
    rows[:, _ID_DIGITS + 1] = stars.astype(np.uint8) + 48
    rows[:, _ID_DIGITS + 2] = ord(",")
    rows[:, _ID_DIGITS + 3:_ID_DIGITS + 13] = date_chars[days]
    rows[:, -1] = ord("\n")
    keep = np.ones(rows.shape, bool)
    keep[:, :_ID_DIGITS] = id_keep[users]
    line_ends = np.cumsum(keep.sum(1, dtype=np.int64))
    return rows[keep], line_ends


def _write_titles(path: Path, sim: Simulation) -> None:
    years = [str(y) if y else "NULL" for y in sim.years.tolist()]
    lines = [f"{i},{y},{t}\n" for i, y, t in zip(sim.movie_ids.tolist(), years, sim.titles)]
    path.write_bytes("".join(lines).encode("latin-1"))


def _stats(sim: Simulation, files: list[str], root: Path) -> dict:
    per_user = np.bincount(sim.users, minlength=len(sim.customer_ids))
    per_movie = np.bincount(sim.items, minlength=len(sim.years))
    top = np.sort(per_movie)[::-1]
    num_items = len(sim.years)

    def summary(x: np.ndarray) -> dict:
        return {"min": int(x.min()), "median": float(np.median(x)), "mean": round(float(x.mean()), 2),
                "max": int(x.max())}

    return {
        "ratings": int(len(sim.users)),
        "users": int(np.count_nonzero(per_user)),
        "movies": int(np.count_nonzero(per_movie)),
        "files": files,
        "bytes": int(sum((root / f).stat().st_size for f in files)),
        "density": round(len(sim.users) / (len(per_user) * num_items), 5),
        "ratings_per_user": summary(per_user),
        "ratings_per_movie": summary(per_movie),
        "top_1pct_movies_share": round(float(top[: max(1, num_items // 100)].sum() / len(sim.users)), 4),
        "users_with_under_100_unrated": int(np.count_nonzero(per_user > num_items - 100)),
        "stars": {str(s): round(float(np.mean(sim.stars == s)), 4) for s in range(1, 6)},
        "first_date": str(FIRST_DAY + int(sim.days.min())),
        "last_date": str(FIRST_DAY + int(sim.days.max())),
    }


# ----------------------------------------------------------------------------------------------
# helpers


def _params(given: dict) -> dict:
    """`generate`'s parameters (all but `out`) with defaults filled in, as JSON-ready values."""
    sig = inspect.signature(generate)
    unknown = set(given) - set(sig.parameters)
    if unknown:
        raise TypeError(f"unknown synthetic data parameter(s): {sorted(unknown)}")
    bound = sig.bind_partial(**given)
    bound.apply_defaults()
    # annotations are strings (postponed evaluation); they say which values are floats
    return {k: (float(v) if sig.parameters[k].annotation == "float" else int(v))
            for k, v in bound.arguments.items() if k != "out"}


def _fsync(path: Path) -> None:
    # flushed before the marker exists, so a crash cannot leave a marker over missing data
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=4)
def _load_truth(path: str, mtime_ns: int, size: int) -> dict:
    """truth.npz plus sorted id lookups; cached per file version (mtime and size in the key)."""
    with np.load(path) as z:
        truth = {k: z[k] for k in z.files}
    truth["taste_strength"] = np.float32(truth["taste_strength"])
    for name, ids in (("customer", truth["customer_ids"]), ("movie", truth["movie_ids"])):
        order = np.argsort(ids, kind="stable")
        truth[f"{name}_order"], truth[f"{name}_sorted"] = order, ids[order]
    return truth


def _lookup(order: np.ndarray, sorted_ids: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    pos = np.searchsorted(sorted_ids, ids).clip(max=len(sorted_ids) - 1)
    bad = sorted_ids[pos] != ids
    if bad.any():
        raise KeyError(f"unknown {what} id {ids[bad][0]} in the synthetic data set")
    return order[pos]


def main(argv: list[str] | None = None) -> None:
    """`python -m flixrec.data.synthetic --out DIR [...]`: generate (or reuse) and print stats."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output directory")
    # defaults (None) are left to `generate`, so they are written down once
    p.add_argument("--users", type=int, help="number of users (default 3000)")
    p.add_argument("--movies", type=int, help="number of movies (default 1000)")
    p.add_argument("--ratings-per-user", type=float, help="mean ratings per user (default 60)")
    p.add_argument("--taste-dim", type=int)
    p.add_argument("--taste-strength", type=float)
    p.add_argument("--popularity-skew", type=float)
    p.add_argument("--files", type=int, help="number of combined_data_*.txt files (default 4)")
    p.add_argument("--seed", type=int)
    p.add_argument("--force", action="store_true", help="regenerate even if the data set exists")
    a = p.parse_args(argv)
    params = dict(num_users=a.users, num_items=a.movies, mean_ratings_per_user=a.ratings_per_user,
                  taste_dim=a.taste_dim, taste_strength=a.taste_strength,
                  popularity_skew=a.popularity_skew, seed=a.seed, num_files=a.files)
    params = {k: v for k, v in params.items() if v is not None}
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.force:
        generate(a.out, **params)
    else:
        ensure_synthetic(a.out, **params)
    print(json.dumps(read_marker(a.out)["stats"], indent=1))


if __name__ == "__main__":
    main()
