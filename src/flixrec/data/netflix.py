"""Netflix Prize readers: training ratings (Kaggle and original layouts), titles, probe, qualifying.

Rating files are parsed whole-array, never line by line in Python: each file is read in chunks of
whole lines into a byte buffer; newlines are found with one vector compare; the last `_W` bytes of
every line are gathered into a `(lines, _W)` byte matrix (right-aligned, so the fixed-width tail
`,R,YYYY-MM-DD` sits in fixed columns) and transposed, so each field is a few vector operations on
one contiguous row. Movie headers (`123:`) are turned into (movie, count) segments with a cumulative
sum; the movie of the last segment carries over to the next chunk. Chunks are parsed on a small
thread pool (numpy releases the GIL) while the main thread reads ahead, and consumed in order, so
strict mode reports the first bad line of a file with its 1-based line number.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import as_strided

from flixrec.data.ratings import Ratings, compact_item_dtype, dense_ids
from flixrec.errors import DataError

log = logging.getLogger(__name__)

_W = 24  # bytes of each line looked at: the longest valid line is 9 + 13 = 22 (`CustomerID,R,date`)
_MAX_ID_DIGITS = 9  # ids stay below 1e9, so they fit int32 (the real data stops at 2,649,429)
_NL, _CR = 10, 13
# byte - ord("0") of the separators: as uint8 the subtraction wraps, so they are never digits
_COMMA, _DASH, _COLON = ((ord(c) - 48) & 0xFF for c in ",-:")
_NO_DAY = np.iinfo(np.int32).min
_DEFAULT_CHUNK = 64 << 20

EXPECTED_LAYOUT = ("expected combined_data_1.txt ... combined_data_4.txt (Kaggle layout) "
                   "or training_set/mv_0000001.txt ... (original Netflix Prize layout)")


@dataclass(frozen=True)
class _LineFormat:
    """A data-line format: `CustomerID` followed by a fixed-width tail of `tail` characters."""

    expected: str
    tail: int
    has_rating: bool
    has_date: bool


_TRAINING = _LineFormat("CustomerID,Rating,YYYY-MM-DD", 13, True, True)
_QUALIFYING = _LineFormat("CustomerID,YYYY-MM-DD", 11, False, True)
_PROBE = _LineFormat("CustomerID", 0, False, False)


# ----------------------------------------------------------------------------------------------
# public API


class NetflixReader:
    """Netflix Prize training ratings, for `ratings.read_cached`.

    `root` holds either the Kaggle layout (`combined_data_*.txt`) or the original layout
    (`training_set/mv_*.txt`), and optionally `movie_titles.csv`. With `on_bad_lines="error"` the
    first bad line raises `DataError(file, problem, line)`; with `"skip"` bad lines are dropped,
    counted per file in `Ratings.extra["skipped_lines"]` and logged. `chunk_bytes` and `workers`
    only trade memory for speed; the result does not depend on them.
    """

    name = "netflix"
    version = 1

    def __init__(self, on_bad_lines: str = "error", *, chunk_bytes: int = _DEFAULT_CHUNK,
                 workers: int | None = None) -> None:
        if on_bad_lines not in ("error", "skip"):
            raise ValueError(f"on_bad_lines={on_bad_lines!r}: choose 'error' or 'skip'")
        self.on_bad_lines = on_bad_lines
        self.chunk_bytes = max(int(chunk_bytes), 64)
        self.workers = workers or min(2, os.cpu_count() or 1)

    def options(self) -> dict:
        return {"on_bad_lines": self.on_bad_lines}

    def files(self, root: str | Path) -> list[Path]:
        """Rating files in reading order, then `movie_titles.csv` if present (so the cache key
        covers it). Raises DataError naming both layouts when there are no rating files."""
        _, files = _find_rating_files(Path(root))
        titles = Path(root) / "movie_titles.csv"
        return files + [titles] if titles.is_file() else files

    def parse(self, root: str | Path) -> Ratings:
        """Parse every rating file under `root` into a `Ratings` with day timestamps.

        users int32 dense, items int16 (int32 past 32,767 movies) dense, ratings int8 in 1..5,
        times int32 days since 1970-01-01; user_ids / item_ids are the original customer and movie
        ids (int64, increasing). Row order is file order. Item titles and years come from
        `movie_titles.csv` when present (None / NaN for movies it lacks).
        """
        root = Path(root)
        layout, files = _find_rating_files(root)
        scan = _scan(files, _TRAINING, self.on_bad_lines, carry_across_files=layout == "kaggle",
                     chunk_bytes=self.chunk_bytes, workers=self.workers)
        if len(scan.customers) == 0:
            raise DataError(root, f"no ratings found in {len(files)} rating file(s)")
        users, user_ids = dense_ids(scan.customers, scan.max_customer + 1)
        del scan.customers  # the raw ids are as large as `users`; free them before building items
        item_ids = np.unique(scan.seg_movies[scan.seg_counts > 0])
        seg_items = np.searchsorted(item_ids, scan.seg_movies).astype(compact_item_dtype(len(item_ids)))
        table = Ratings(users=users, items=np.repeat(seg_items, scan.seg_counts),
                        ratings=scan.ratings, times=scan.days, user_ids=user_ids, item_ids=item_ids,
                        time_unit="day",
                        extra={"layout": layout, "skipped_lines": scan.skipped})
        titles_path = root / "movie_titles.csv"
        if titles_path.is_file():
            titles = read_movie_titles(titles_path).set_index("movie_id")
            table.item_titles = (titles["title"].reindex(item_ids).astype(object)
                                 .where(lambda s: s.notna(), None).to_numpy())
            table.item_years = titles["year"].reindex(item_ids).to_numpy(np.float64)
        return table


def read_movie_titles(path: str | Path) -> pd.DataFrame:
    """`movie_titles.csv` as a DataFrame: movie_id int64, year float64 (NaN for `NULL`), title str.

    The file is latin-1 and titles contain unquoted commas, so each line is split on its first two
    commas only; CRLF endings are accepted. A bad line or a repeated movie id raises DataError
    with its 1-based line number.
    """
    path = Path(path)
    text = path.read_bytes().decode("latin-1")
    lines = pd.Series(text.split("\n"), dtype=object)
    if len(lines) and lines.iloc[-1] == "":
        lines = lines.iloc[:-1]  # the trailing newline, not an empty line
    lines = lines.str.removesuffix("\r")
    parts = lines.str.split(",", n=2, expand=True).reindex(columns=[0, 1, 2])
    ok = (parts[0].str.fullmatch(r"\d{1,18}") & parts[1].str.fullmatch(r"\d{4}|NULL")
          & parts[2].notna()).fillna(False).to_numpy(bool)
    if not ok.all():
        i = int(np.argmin(ok))
        raise DataError(path, f"malformed line {_show(lines.iloc[i])} (expected MovieID,YYYY|NULL,Title)",
                        line=i + 1)
    movie_ids = parts[0].astype(np.int64).to_numpy()
    dup = pd.Series(movie_ids).duplicated().to_numpy()
    if dup.any():
        i = int(np.argmax(dup))
        first = int(np.argmax(movie_ids == movie_ids[i]))
        raise DataError(path, f"movie id {movie_ids[i]} repeated (first on line {first + 1})", line=i + 1)
    years = pd.to_numeric(parts[1].where(parts[1] != "NULL"), errors="coerce").astype(np.float64)
    return pd.DataFrame({"movie_id": movie_ids, "year": years.to_numpy(),
                         "title": parts[2].astype(str).to_numpy()})


def read_probe(path: str | Path, on_bad_lines: str = "error") -> pd.DataFrame:
    """`probe.txt` (`M:` headers, then one CustomerID per line) as movie_id, customer_id (int64),
    in file order. Errors as in `NetflixReader`."""
    scan = _scan([Path(path)], _PROBE, on_bad_lines, carry_across_files=False)
    return pd.DataFrame({"movie_id": np.repeat(scan.seg_movies, scan.seg_counts),
                         "customer_id": scan.customers.astype(np.int64)})


def read_qualifying(path: str | Path, on_bad_lines: str = "error") -> pd.DataFrame:
    """`qualifying.txt` (`M:` headers, then `CustomerID,YYYY-MM-DD`) as movie_id, customer_id
    (int64) and day (int32 days since 1970-01-01), in file order. Errors as in `NetflixReader`."""
    scan = _scan([Path(path)], _QUALIFYING, on_bad_lines, carry_across_files=False)
    return pd.DataFrame({"movie_id": np.repeat(scan.seg_movies, scan.seg_counts),
                         "customer_id": scan.customers.astype(np.int64), "day": scan.days})


# ----------------------------------------------------------------------------------------------
# layout


def _find_rating_files(root: Path) -> tuple[str, list[Path]]:
    """("kaggle" | "original", rating files sorted by their number)."""
    if not root.is_dir():
        what = "not a directory" if root.exists() else "no such directory"
        raise DataError(root, f"{what}; {EXPECTED_LAYOUT}")
    kaggle = _numbered(root, "combined_data_*.txt", r"combined_data_(\d+)\.txt")
    original = _numbered(root / "training_set", "mv_*.txt", r"mv_(\d+)\.txt")
    if kaggle and original:
        log.warning("%s holds both layouts; reading combined_data_*.txt and ignoring training_set/", root)
    if kaggle:
        return "kaggle", kaggle
    if original:
        return "original", original
    raise DataError(root, f"no Netflix rating files found; {EXPECTED_LAYOUT}")


def _numbered(folder: Path, pattern: str, regex: str) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [(re.fullmatch(regex, p.name), p) for p in folder.glob(pattern) if p.is_file()]
    return [p for _, p in sorted((int(m.group(1)), p) for m, p in found if m)]


# ----------------------------------------------------------------------------------------------
# whole-array parsing


@dataclass
class _Chunk:
    """What one chunk of whole lines holds. Line indices are 0-based within the chunk.

    customers/ratings/days: the valid data lines (int32, int8, int32; ratings/days None when the
    format has none). lead: how many of them come before the chunk's first header (they belong to
    the movie carried from earlier). movies/counts: each header's movie id (-1 if malformed) and
    valid-line count. first_bad: first malformed/invalid line (or None), with its bytes. num_bad:
    bad lines plus valid lines dropped under a malformed header (what skip mode skips).
    """

    num_lines: int
    customers: np.ndarray
    ratings: np.ndarray | None
    days: np.ndarray | None
    lead: int
    movies: np.ndarray
    counts: np.ndarray
    num_bad: int
    first_bad: int | None
    first_bad_text: bytes
    first_lead: int | None
    max_customer: int
    unterminated: bool  # the last line has no newline (only possible at the end of a file)


def _parse_chunk(buf: np.ndarray, size: int, fmt: _LineFormat) -> _Chunk:
    """Parse `buf[_W:_W + size]` (whole lines; the last may lack its newline). `buf[:_W]` is
    padding, so a window ending at any line end stays inside `buf`."""
    data = buf[_W:_W + size]
    ends = np.flatnonzero(data == _NL)
    unterminated = bool(size and data[-1] != _NL)
    if unterminated:
        ends = np.append(ends, size)
    n = len(ends)
    starts = np.empty_like(ends)
    starts[:1] = 0
    starts[1:] = ends[:-1] + 1
    raw_ends = ends
    # drop one CR before the newline; an empty line peeks at the padding or previous newline
    ends = ends - ((buf[_W - 1 + ends] == _CR) & (ends > starts))
    lengths = ends - starts

    # row r of `win` is buf[r:r + _W], so row `ends[i]` is the _W bytes that end line i
    win = as_strided(buf, shape=(len(buf) - _W + 1, _W), strides=(1, 1), writeable=False)
    rows = win[ends]
    rows -= np.uint8(48)  # digit values; separators wrap around to values above 9
    T = np.ascontiguousarray(rows.T)  # (_W, n): each column of the lines is one contiguous row
    del rows
    last = _W - 1

    # every line ending in ':' opens a segment; a malformed one gets movie -1, so in skip mode
    # the lines under it are dropped rather than credited to the previous movie
    is_header = T[last] == _COLON
    head_rows = np.flatnonzero(is_header)
    movies, head_ok = _right_aligned_int(T[:, head_rows], last - 1, lengths[head_rows] - 1)
    movies = np.where(head_ok, movies, -1).astype(np.int64)

    tail = fmt.tail
    customers, ok = _right_aligned_int(T, last - tail, lengths - tail)
    ok &= ~is_header
    if tail:
        # each tail column must lie in [lo, hi]: digits 0..9, rating 1..5, separators exactly
        lo, hi = _tail_ranges(fmt)
        block = T[_W - tail:]
        ok &= ((block >= lo[:, None]) & (block <= hi[:, None])).all(axis=0)
    days = None
    if fmt.has_date:
        days, date_ok = _days(T)
        ok &= date_ok
    bad = ~ok & ~is_header
    bad[head_rows[~head_ok]] = True

    # segment 0 = lines before the first header; segment k = lines under the k-th header
    segment = np.cumsum(is_header, dtype=np.int32)
    first_bad = int(np.argmax(bad)) if bad.any() else None
    num_bad = int(bad.sum())
    if not head_ok.all():
        orphaned = ok & ~np.concatenate([[True], head_ok])[segment]
        num_bad += int(orphaned.sum())
        ok &= ~orphaned
    counts = np.bincount(segment[ok], minlength=len(head_rows) + 1)
    lead = int(counts[0])
    first_lead = int(np.argmax(ok)) if lead else None

    customers = customers[ok]
    return _Chunk(
        num_lines=n, customers=customers,
        ratings=T[_W - 12][ok].astype(np.int8) if fmt.has_rating else None,  # the R of `,R,date`
        days=days[ok] if days is not None else None,
        lead=lead, movies=movies, counts=counts[1:].astype(np.int64),
        num_bad=num_bad, first_bad=first_bad,
        first_bad_text=b"" if first_bad is None
        else data[starts[first_bad]:raw_ends[first_bad]].tobytes(),
        first_lead=first_lead,
        max_customer=int(customers.max()) if len(customers) else -1, unterminated=unterminated,
    )


def _right_aligned_int(T: np.ndarray, last_col: int,
                       lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Parse the integer whose last digit is row `last_col` of T and which has `lengths` digits.

    T is (_W, n) digit values. Returns (int32 values (n,), ok (n,)); ok is False where a length is
    outside 1.._MAX_ID_DIGITS or a character is not a digit. Loops over digit positions, not lines.
    """
    values = np.zeros(T.shape[1], np.int32)
    ok = (lengths >= 1) & (lengths <= _MAX_ID_DIGITS)
    width = min(_MAX_ID_DIGITS, int(lengths.max(initial=0)), last_col + 1)
    for k in range(width):
        inside = lengths > k
        digit = np.where(inside, T[last_col - k], 0)
        ok &= digit < 10
        values += digit.astype(np.int32) * np.int32(10**k)
    return values, ok


@functools.lru_cache(maxsize=None)
def _tail_ranges(fmt: _LineFormat) -> tuple[np.ndarray, np.ndarray]:
    """Allowed [lo, hi] of each tail column (as digit values) for `fmt`."""
    cols = ([(_COMMA, _COMMA), (1, 5)] if fmt.has_rating else []) + \
        ([(_COMMA, _COMMA)] + [(0, 9)] * 4 + [(_DASH, _DASH)] + [(0, 9)] * 2 + [(_DASH, _DASH)]
         + [(0, 9)] * 2 if fmt.has_date else [])
    assert len(cols) == fmt.tail
    lo, hi = np.array(cols, np.uint8).T
    return lo, hi


def _days(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `YYYY-MM-DD` in the last 10 rows of T as int32 days since 1970-01-01, and whether it
    is a real calendar date (garbage digits give ok=False, never an index error)."""
    c = _W - 10

    def num(*rows: int) -> np.ndarray:
        out = T[c + rows[0]].astype(np.int32)
        for r in rows[1:]:
            out = out * 10 + T[c + r]
        return out

    year, month, day = num(0, 1, 2, 3), num(5, 6), num(8, 9)
    ok = (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31) & (year <= 9999)
    key = np.where(ok, (year * 12 + month - 1) * 31 + day - 1, 0)
    days = _day_table()[key]
    return days, ok & (days != _NO_DAY)


@functools.lru_cache(maxsize=1)
def _day_table() -> np.ndarray:
    """int32 days since 1970-01-01 of every (year 0..9999, month, day 1..31), indexed by
    `(year * 12 + month - 1) * 31 + day - 1`; `_NO_DAY` where no such date exists (Feb 30, year 0).
    15 MB, built once; a lookup both converts and validates a date."""
    y = np.arange(10000, dtype=np.int64)[:, None, None]
    m = np.arange(1, 13, dtype=np.int64)[None, :, None]
    d = np.arange(1, 32, dtype=np.int64)[None, None, :]
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    month_days = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[m - 1] + ((m == 2) & leap)
    # days_from_civil (H. Hinnant): count from 0000-03-01 so the leap day ends the year
    yy = y - (m <= 2)
    era = yy // 400
    yoe = yy - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return np.where((d <= month_days) & (y >= 1), days, _NO_DAY).astype(np.int32).ravel()


# ----------------------------------------------------------------------------------------------
# files -> chunks -> arrays


def _read_chunks(path: Path, chunk_bytes: int) -> Iterator[tuple[np.ndarray, int, bool]]:
    """Yield (buffer, size, at_eof): `buffer[_W:_W + size]` is whole lines of `path`, in order.

    Only the final chunk may end without a newline. A line longer than a whole chunk cannot be
    valid in any format here; it is passed on cut (so it is reported) and its rest is skipped.
    """
    rest = b""
    with open(path, "rb", buffering=0) as f:
        file_size = os.fstat(f.fileno()).st_size
        while True:
            # a small file gets a small buffer (one byte more than what is left, so a short read
            # means end of file); 17,770 files of the original layout must not each cost a chunk
            want = min(chunk_bytes, max(file_size - f.tell(), 0) + 1)
            block = bytearray(_W + len(rest) + want)
            block[:_W] = b"\n" * _W
            block[_W:_W + len(rest)] = rest
            got = _read_into(f, memoryview(block)[_W + len(rest):])
            size = len(rest) + got
            buf = np.frombuffer(block, np.uint8)
            if got < want:
                if size:
                    yield buf, size, True
                return
            cut = block.rfind(b"\n", _W, _W + size)
            if cut < 0:
                yield buf, size, False
                rest = _skip_line(f)
                continue
            rest = bytes(block[cut + 1:_W + size])
            yield buf, cut + 1 - _W, False


def _read_into(f, view: memoryview) -> int:
    got = 0
    while got < len(view):
        k = f.readinto(view[got:])
        if not k:
            break
        got += k
    return got


def _skip_line(f) -> bytes:
    """Read past the next newline; return what follows it in the block read."""
    while block := f.read(1 << 16):
        cut = block.find(b"\n")
        if cut >= 0:
            return block[cut + 1:]
    return b""


@dataclass
class _Scan:
    customers: np.ndarray  # int32 (R,) raw customer ids
    ratings: np.ndarray | None  # int8 (R,)
    days: np.ndarray | None  # int32 (R,)
    seg_movies: np.ndarray  # int64 (S,): rows come in runs of one movie ...
    seg_counts: np.ndarray  # int64 (S,): ... of these lengths, summing to R
    max_customer: int
    skipped: dict = field(default_factory=dict)


def _scan(files: list[Path], fmt: _LineFormat, on_bad_lines: str, carry_across_files: bool,
          chunk_bytes: int = _DEFAULT_CHUNK, workers: int = 2) -> _Scan:
    """Parse `files` in order. Chunks are parsed on `workers` threads, at most `workers + 1`
    ahead of the in-order consumer, which bounds memory to a few chunks plus the output.
    A data line belongs to the latest header before it (across files if `carry_across_files`)."""
    if on_bad_lines not in ("error", "skip"):
        raise ValueError(f"on_bad_lines={on_bad_lines!r}: choose 'error' or 'skip'")
    # Outputs are allocated for the most lines the files could hold (every data line takes at
    # least tail + 2 bytes) and trimmed at the end: pages never written are never resident, and
    # there is no list of pieces to concatenate, which would double the peak memory.
    capacity = sum(p.stat().st_size // (fmt.tail + 2) + 1 for p in files)
    columns = {"customers": np.int32, "ratings": np.int8 if fmt.has_rating else None,
               "days": np.int32 if fmt.has_date else None}
    out = {name: np.empty(capacity, dtype) for name, dtype in columns.items() if dtype is not None}
    filled = 0
    seg_movies: list[np.ndarray] = []
    seg_counts: list[np.ndarray] = []
    skipped: dict[str, int] = {}
    state = {"movie": None, "line": 0, "file": None, "max": -1}  # carried from chunk to chunk

    def finish_file() -> None:
        name = state["file"]
        if name is not None and skipped.get(name):
            log.warning("%s: skipped %d bad line(s)", name, skipped[name])

    def consume(path: Path, chunk: _Chunk, at_eof: bool) -> None:
        nonlocal filled
        if state["file"] != path.name:
            finish_file()
            state.update(file=path.name, line=0)
            if not carry_across_files:
                state["movie"] = None
        # lead lines with no movie: none seen yet (None) or a malformed header (-1, skip mode only)
        orphans = chunk.lead if state["movie"] in (None, -1) else 0
        if on_bad_lines == "error":
            errors = []
            if chunk.first_bad is not None:
                cut = at_eof and chunk.unterminated and chunk.first_bad == chunk.num_lines - 1
                errors.append((chunk.first_bad, _diagnose(chunk.first_bad_text, fmt, cut)))
            if orphans and state["movie"] is None:
                errors.append((chunk.first_lead, "rating line before any movie header 'M:'"))
            if errors:
                i, problem = min(errors)
                raise DataError(path, problem, line=state["line"] + i + 1)
        elif chunk.num_bad or orphans:
            skipped[path.name] = skipped.get(path.name, 0) + chunk.num_bad + orphans
        k = len(chunk.customers) - orphans
        for name, column in out.items():
            if filled + k > len(column):  # only if a file grew while we read it
                column = out[name] = np.concatenate([column[:filled], np.empty(filled + k, column.dtype)])
            column[filled:filled + k] = getattr(chunk, name)[orphans:]
        filled += k
        if chunk.lead and not orphans:
            seg_movies.append(np.array([state["movie"]], np.int64))
            seg_counts.append(np.array([chunk.lead], np.int64))
        seg_movies.append(chunk.movies)
        seg_counts.append(chunk.counts)
        if len(chunk.movies):
            state["movie"] = int(chunk.movies[-1])
        state["line"] += chunk.num_lines
        state["max"] = max(state["max"], chunk.max_customer)

    pending: deque[tuple[Path, Future, bool]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for path in files:
                for buf, size, at_eof in _read_chunks(path, chunk_bytes):
                    pending.append((path, pool.submit(_parse_chunk, buf, size, fmt), at_eof))
                    del buf  # the worker holds the only reference, so it is freed once parsed
                    while len(pending) > workers:
                        path_, fut, eof = pending.popleft()
                        consume(path_, fut.result(), eof)
            while pending:
                path_, fut, eof = pending.popleft()
                consume(path_, fut.result(), eof)
        except BaseException:
            for _, fut, _ in pending:
                fut.cancel()
            raise
    finish_file()

    for column in out.values():
        column.resize(filled, refcheck=False)  # shrinks in place; nothing else refers to it
    return _Scan(
        customers=out["customers"], ratings=out.get("ratings"), days=out.get("days"),
        seg_movies=np.concatenate(seg_movies) if seg_movies else np.zeros(0, np.int64),
        seg_counts=np.concatenate(seg_counts) if seg_counts else np.zeros(0, np.int64),
        max_customer=state["max"], skipped=skipped,
    )


# ----------------------------------------------------------------------------------------------
# messages for the one bad line (Python on a single line is fine)


def _diagnose(raw: bytes, fmt: _LineFormat, last_line_cut: bool) -> str:
    """Say what is wrong with one line the vectorised check rejected."""
    text = raw.decode("latin-1").removesuffix("\r")
    fields = text.split(",")
    problem = f"malformed line {_show(text)} (expected {fmt.expected} or MovieID:)"
    if len(fields) == 1 + fmt.has_rating + fmt.has_date and re.fullmatch(r"\d{1,9}", fields[0]):
        if fmt.has_rating and not re.fullmatch(r"[1-5]", fields[1]):
            problem = (f"rating {fields[1]} outside 1..5" if re.fullmatch(r"\d+", fields[1])
                       else f"invalid rating {_show(fields[1])} (expected 1..5)")
        elif fmt.has_date:
            problem = f"invalid date {_show(fields[-1])} (expected YYYY-MM-DD)"
    if last_line_cut:
        problem += "; the file seems truncated (its last line has no newline)"
    return problem


def _show(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
