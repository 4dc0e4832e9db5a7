"""Benchmark: parsing Netflix Kaggle-layout ratings, ours (cold and warm cache) vs plain pandas.

    python bench/bench_parse.py                       # 10M ratings, quick
    python bench/bench_parse.py --ratings 100480507   # full Netflix size (~2 GB of text)

Writes synthetic data in the Kaggle layout under bench/_work/ (deleted afterwards unless --keep),
with `flixrec.data.synthetic.generate` (realistic; the default when present) or, with
`--writer quick` (or when that module is missing), the plain vectorised writer below. Then it
runs each reader in its own subprocess and reports wall seconds and the subprocess's peak RSS
(which includes the interpreter and imports) as JSON. The files were just written, so they are in
the page cache: the figures measure parsing, not the disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parent / "_work"
NUM_MOVIES, NUM_CUSTOMERS, MAX_CUSTOMER_ID = 17_770, 480_189, 2_649_429
FIRST_DAY, LAST_DAY = 10_541, 13_149  # 1998-11-11 .. 2005-12-31, the real range
BATCH = 4_000_000


def make_data(root: Path, num_ratings: int, writer: str) -> str:
    """Write about `num_ratings` ratings in the Kaggle layout; returns the writer used."""
    if writer in ("auto", "synthetic"):
        try:
            from flixrec.data.synthetic import generate
        except ImportError:
            if writer == "synthetic":
                raise
        else:
            # Netflix proportions: 480,189 users x 17,770 movies x 209 ratings per user = 100M
            users = max(1000, round(NUM_CUSTOMERS * num_ratings / 100_480_507))
            generate(root, num_users=users, num_items=NUM_MOVIES,
                     mean_ratings_per_user=num_ratings / users, seed=0)
            return "synthetic"
    write_kaggle(root, num_ratings)
    return "quick"


def write_kaggle(root: Path, num_ratings: int, seed: int = 0) -> None:
    """Write `num_ratings` ratings as combined_data_1..4.txt, vectorised.

    Movies get skewed rating counts; customers are drawn from 480,189 sparse ids in 1..2,649,429
    with a skewed popularity; dates are uniform over the real range. Each line is built in a
    fixed-width byte matrix and the unused (left-pad) bytes are masked out. Movies are written in
    batches of whole movies of about `BATCH` ratings, so memory stays small.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    weights = rng.lognormal(0, 1.5, NUM_MOVIES)
    counts = rng.multinomial(num_ratings, weights / weights.sum())
    customer_pool = np.sort(rng.choice(np.arange(1, MAX_CUSTOMER_ID + 1), NUM_CUSTOMERS, replace=False))
    popularity_cdf = np.cumsum(rng.lognormal(0, 1.0, NUM_CUSTOMERS))
    popularity_cdf /= popularity_cdf[-1]
    day_text = _day_text()
    before = np.cumsum(counts) - counts
    # 4 files with about equal numbers of ratings, split at movie boundaries (as the real ones)
    file_of_movie = np.minimum(before * 4 // max(num_ratings, 1), 3)
    batch_of_movie = before // BATCH
    for f in range(4):
        with open(root / f"combined_data_{f + 1}.txt", "wb") as out:
            in_file = (file_of_movie == f) & (counts > 0)
            for b in np.unique(batch_of_movie[in_file]):
                movies = np.flatnonzero(in_file & (batch_of_movie == b))
                m = int(counts[movies].sum())
                customers = customer_pool[np.minimum(np.searchsorted(popularity_cdf, rng.random(m)),
                                                     NUM_CUSTOMERS - 1)]
                out.write(_lines(customers, rng.integers(1, 6, m),
                                 rng.integers(0, LAST_DAY - FIRST_DAY + 1, m), day_text,
                                 movies + 1, np.cumsum(counts[movies]) - counts[movies]))


def _day_text() -> np.ndarray:
    days = np.arange(FIRST_DAY, LAST_DAY + 1).astype("datetime64[D]").astype(str)
    return np.frombuffer("".join(days).encode(), np.uint8).reshape(-1, 10)


def _digits(values: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-aligned decimal digits (n, width) as ASCII and a mask of the significant ones."""
    powers = 10 ** np.arange(width - 1, -1, -1)
    digits = (values[:, None] // powers) % 10
    significant = (values[:, None] >= powers) | (powers == 1)
    return (digits + 48).astype(np.uint8), significant


def _lines(customers, ratings, day_idx, day_text, header_movies, header_at) -> bytes:
    n = len(customers)
    mat = np.zeros((n, 21), np.uint8)
    keep = np.ones((n, 21), bool)
    mat[:, :7], keep[:, :7] = _digits(customers, 7)
    mat[:, 7], mat[:, 8], mat[:, 9] = ord(","), ratings + 48, ord(",")
    mat[:, 10:20] = day_text[day_idx]
    mat[:, 20] = ord("\n")
    body = mat[keep]
    line_len = keep.sum(1)
    if len(header_movies) == 0:
        return body.tobytes()
    hmat = np.zeros((len(header_movies), 7), np.uint8)
    hkeep = np.ones_like(hmat, bool)
    hmat[:, :5], hkeep[:, :5] = _digits(header_movies, 5)
    hmat[:, 5], hmat[:, 6] = ord(":"), ord("\n")
    heads = [hmat[i][hkeep[i]].tobytes() for i in range(len(hmat))]  # one per movie: few
    offsets = np.concatenate([[0], np.cumsum(line_len)])[header_at]
    parts, prev = [], 0
    for off, head in zip(offsets, heads):
        parts += [body[prev:off].tobytes(), head]
        prev = off
    parts.append(body[prev:].tobytes())
    return b"".join(parts)


# ----------------------------------------------------------------------------------------------
# the measured jobs (each runs in a fresh subprocess)


def job_ours(root: str, cache: str) -> dict:
    from flixrec.data.netflix import NetflixReader
    from flixrec.data.ratings import read_cached

    reader, parse_seconds = NetflixReader(), []

    def timed_parse(root):  # to split the cold time into parsing and writing the cache
        t = time.perf_counter()
        table = NetflixReader.parse(reader, root)
        parse_seconds.append(round(time.perf_counter() - t, 2))
        return table

    reader.parse = timed_parse
    t = time.perf_counter()
    table = read_cached(reader, root, cache)
    return {"seconds": time.perf_counter() - t, "parse_seconds": sum(parse_seconds),
            "ratings": len(table), "users": table.num_users,
            "items": table.num_items,
            "bytes_in_memory": sum(getattr(table, c).nbytes
                                   for c in ("users", "items", "ratings", "times"))}


def job_pandas(root: str, cache: str) -> dict:
    """The straightforward way: read_csv each file, forward-fill the `M:` headers, to_datetime."""
    import pandas as pd

    t = time.perf_counter()
    frames = []
    for path in sorted(Path(root).glob("combined_data_*.txt")):
        df = pd.read_csv(path, header=None, names=["customer_id", "rating", "date"])
        header = df["rating"].isna()
        df["movie_id"] = df["customer_id"].where(header).str.rstrip(":").ffill().astype("int64")
        df = df[~header]
        frames.append(pd.DataFrame({
            "customer_id": df["customer_id"].astype("int64"), "movie_id": df["movie_id"],
            "rating": df["rating"].astype("int8"),
            "date": pd.to_datetime(df["date"], format="%Y-%m-%d")}))
    df = pd.concat(frames, ignore_index=True)
    return {"seconds": time.perf_counter() - t, "ratings": len(df),
            "users": int(df["customer_id"].nunique()), "items": int(df["movie_id"].nunique()),
            "bytes_in_memory": int(df.memory_usage(deep=True).sum())}


def run_child(job: str, root: Path, cache: Path, mem_limit_gb: float) -> dict:
    """Run `job` in a subprocess; add its wall time and peak RSS (from /proc: VmHWM)."""
    cmd = [sys.executable, __file__, "--child", job, "--root", str(root), "--cache", str(cache),
           "--mem-limit-gb", str(mem_limit_gb)]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"job": job, "failed": proc.stderr.strip().splitlines()[-1:] or [f"rc {proc.returncode}"],
                "process_seconds": wall}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out.update(job=job, process_seconds=round(wall, 2))
    return out


def child(job: str, root: str, cache: str, mem_limit_gb: float) -> None:
    # a cap turns a runaway baseline into a MemoryError instead of an OOM kill of the machine
    limit = int(mem_limit_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    base = _peak_rss_mb()
    out = {"ours_cold": job_ours, "ours_warm": job_ours, "pandas": job_pandas}[job](root, cache)
    out["seconds"] = round(out["seconds"], 2)
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU time: less sensitive to other load
    out["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
    out["peak_rss_mb"] = round(_peak_rss_mb())
    out["rss_after_imports_mb"] = round(base)
    print(json.dumps(out))


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratings", type=int, default=10_000_000)
    ap.add_argument("--writer", choices=["auto", "synthetic", "quick"], default="auto")
    ap.add_argument("--keep", action="store_true", help="keep the generated data and cache")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--mem-limit-gb", type=float, default=20.0)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.root, args.cache, args.mem_limit_gb)
        return
    root = WORK / f"netflix_{args.ratings}_{args.writer}"
    cache = WORK / f"cache_{args.ratings}_{args.writer}"
    shutil.rmtree(cache, ignore_errors=True)
    try:
        t = time.perf_counter()
        writer = "existing" if (root / "combined_data_4.txt").exists() else \
            make_data(root, args.ratings, args.writer)
        text_bytes = sum(p.stat().st_size for p in root.glob("combined_data_*.txt"))
        result = {"requested_ratings": args.ratings, "writer": writer,
                  "text_mb": round(text_bytes / 2**20),
                  "generate_seconds": round(time.perf_counter() - t, 1), "runs": []}
        jobs = ["ours_cold", "ours_warm"] + ([] if args.skip_pandas else ["pandas"])
        for job in jobs:
            result["runs"].append(run_child(job, root, cache, args.mem_limit_gb))
            print(json.dumps(result["runs"][-1]), file=sys.stderr)
        result["cache_mb"] = round(sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20)
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
