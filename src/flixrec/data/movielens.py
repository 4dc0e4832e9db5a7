"""MovieLens readers (100K, 1M, latest-small) for `ratings.read_cached`.

Each reader finds its ratings file (and titles file, when present) in `root` and parses it whole
with pandas' C parser; validation is vectorised, and only a bad file is looked at line by line, to
name the first bad line. Timestamps are seconds since 1970 (`time_unit="second"`). Titles lose
their trailing ` (YYYY)`, which becomes the item's year, as in Netflix's `movie_titles.csv`.
Parsing only reads: the shared data folder may be read-only.
"""

from __future__ import annotations

import csv
import itertools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flixrec.data.ratings import Ratings, compact_item_dtype, dense_ids
from flixrec.errors import DataError

log = logging.getLogger(__name__)

_YEAR_SUFFIX = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")
_MAX_ID = 2 ** 53            # ids are read as float64, exact below this
_MAX_SECONDS = 32503680000   # 3000-01-01: a later timestamp is a typo (and would overflow keys)


@dataclass(frozen=True)
class _Layout:
    """How a ratings file is laid out.

    names: header column names (the part before RecBole's `:type`), or None for no header;
    positions: field index of user, item, rating and timestamp when there is no header;
    empty: field indexes that must be empty (`::` is read as two `:` separators).
    """

    file: str
    expected: str
    sep: str
    num_fields: int
    names: tuple[str, str, str, str] | None = None
    positions: tuple[int, int, int, int] = (0, 1, 2, 3)
    empty: tuple[int, ...] = ()
    half_stars: bool = False


_UDATA = _Layout("u.data", "user<TAB>item<TAB>rating<TAB>timestamp", "\t", 4)
_INTER = _Layout("ml-100k.inter", "user<TAB>item<TAB>rating<TAB>timestamp", "\t", 4,
                 names=("user_id", "item_id", "rating", "timestamp"))
_DAT = _Layout("ratings.dat", "UserID::MovieID::Rating::Timestamp", ":", 7,
               positions=(0, 2, 4, 6), empty=(1, 3, 5))
_CSV = _Layout("ratings.csv", "userId,movieId,rating,timestamp", ",", 4,
               names=("userId", "movieId", "rating", "timestamp"), half_stars=True)


class _MovieLensReader:
    """Common parsing; subclasses say which files to look for and how titles are stored.

    With `on_bad_lines="error"` the first bad line raises `DataError(file, problem, line)`; with
    `"skip"` bad lines are dropped, counted per file in `Ratings.extra["skipped_lines"]` and
    logged. Blank lines are ignored in both modes.
    """

    name = "movielens"
    version = 1
    layouts: tuple[tuple[_Layout, tuple[str, ...]], ...] = ()  # (ratings layout, titles files)

    def __init__(self, on_bad_lines: str = "error") -> None:
        if on_bad_lines not in ("error", "skip"):
            raise ValueError(f"on_bad_lines={on_bad_lines!r}: choose 'error' or 'skip'")
        self.on_bad_lines = on_bad_lines

    def options(self) -> dict:
        return {"on_bad_lines": self.on_bad_lines}

    def files(self, root: str | Path) -> list[Path]:
        """The ratings file, then the titles file if present (so the cache key covers both).
        Raises DataError naming the expected files when `root` has no ratings file."""
        layout, titles = self._find(Path(root))
        return [Path(root) / layout.file] + ([titles] if titles else [])

    def parse(self, root: str | Path) -> Ratings:
        """Parse `root` into a `Ratings` in file order.

        users int32 and items int16/int32 are dense (ids in increasing order in user_ids /
        item_ids, int64); ratings int8 stars (float32 half stars for ml-latest); times int64
        seconds. Titles and years come from the titles file when present (None / NaN for items
        it lacks); without one, item_titles and item_years are None.
        """
        root = Path(root)
        layout, titles_path = self._find(root)
        path = root / layout.file
        users, items, ratings, times, skipped = _read_ratings(path, layout, self.on_bad_lines)
        if len(users) == 0:
            raise DataError(path, "no ratings found")
        dense_users, user_ids = dense_ids(users)
        dense_items, item_ids = dense_ids(items)
        table = Ratings(users=dense_users, items=dense_items.astype(compact_item_dtype(len(item_ids))),
                        ratings=ratings, times=times, user_ids=user_ids, item_ids=item_ids,
                        time_unit="second",
                        extra={"source": layout.file,
                               "skipped_lines": {layout.file: skipped} if skipped else {}})
        if titles_path is not None:
            titles = self.read_titles(titles_path)
            known = [titles.get(i, (None, np.nan)) for i in item_ids.tolist()]
            table.item_titles = np.array([title for title, _ in known], dtype=object)
            table.item_years = np.array([year for _, year in known], dtype=np.float64)
        return table

    def read_titles(self, path: Path) -> dict[int, tuple[str, float]]:
        """item id -> (title without its year, year or NaN)."""
        raise NotImplementedError

    def _find(self, root: Path) -> tuple[_Layout, Path | None]:
        for layout, titles in self.layouts:
            if (root / layout.file).is_file():
                found = [root / t for t in titles if (root / t).is_file()]
                return layout, (found[0] if found else None)
        wanted = " or ".join(layout.file for layout, _ in self.layouts)
        where = "is not a directory" if not root.is_dir() else "has no ratings file"
        raise DataError(root, f"{where}: expected {wanted} ({self.name}) in it "
                              f"(`python -m flixrec.data.download {self.name} DIR` fetches it)")


class ML100KReader(_MovieLensReader):
    """MovieLens 100K: GroupLens `u.data` (tab-separated, no header) with titles from `u.item`,
    or RecBole's `ml-100k.inter` (header `user_id:token item_id:token rating:float
    timestamp:float`) with titles from `ml-100k.item`. Ratings are int8 stars 1..5."""

    name = "ml-100k"
    layouts = ((_UDATA, ("u.item", "ml-100k.item")), (_INTER, ("ml-100k.item", "u.item")))

    def read_titles(self, path: Path) -> dict[int, tuple[str, float]]:
        if path.name == "u.item":  # latin-1, `id|Title (year)|01-Jan-1995|...|genre flags`
            lines = path.read_bytes().decode("latin-1").splitlines()
            return _titles(path, [line.split("|") for line in lines], "id|title|release date|...")
        # RecBole's atomic file: tab-separated under a typed header; its copy is UTF-8
        rows = [line.split("\t") for line in _decode(path).splitlines()]
        header = [h.split(":")[0] for h in rows[0]] if rows else []
        if "item_id" not in header or "movie_title" not in header:
            raise DataError(path, "header lacks item_id:token and movie_title:token_seq", line=1)
        year = header.index("release_year") if "release_year" in header else None
        return _titles(path, rows, "item_id, movie_title and release_year fields", header=1,
                       cols=(header.index("item_id"), header.index("movie_title"), year))


class ML1MReader(_MovieLensReader):
    """MovieLens 1M: `ratings.dat` (`UserID::MovieID::Rating::Timestamp`), titles from latin-1
    `movies.dat` (`MovieID::Title (year)::Genres`). Ratings are int8 stars 1..5."""

    name = "ml-1m"
    layouts = ((_DAT, ("movies.dat",)),)

    def read_titles(self, path: Path) -> dict[int, tuple[str, float]]:
        lines = path.read_bytes().decode("latin-1").splitlines()
        return _titles(path, [line.split("::") for line in lines], "MovieID::Title (year)::Genres")


class MLLatestSmallReader(_MovieLensReader):
    """MovieLens latest-small (or any `ratings.csv` of that format, e.g. ml-25m): header
    `userId,movieId,rating,timestamp`, half stars 0.5..5 as float32; titles from the quoted CSV
    `movies.csv` (`movieId,title,genres`). CRLF line endings are accepted."""

    name = "ml-latest-small"
    layouts = ((_CSV, ("movies.csv",)),)

    def read_titles(self, path: Path) -> dict[int, tuple[str, float]]:
        rows = list(csv.reader(_decode(path).splitlines()))  # titles with commas are quoted
        if not rows or [h.strip() for h in rows[0][:2]] != ["movieId", "title"]:
            raise DataError(path, "expected the header movieId,title,genres", line=1)
        return _titles(path, rows, "movieId,title,genres", header=1)


# ----------------------------------------------------------------------------------------------
# ratings


def _read_ratings(path: Path, layout: _Layout,
                  on_bad_lines: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(user ids int64, item ids int64, ratings int8|float32, times int64, bad lines skipped)."""
    positions, header_lines = layout.positions, 0
    if layout.names is not None:
        positions, header_lines = _header_positions(path, layout), 1
    read = dict(sep=layout.sep, header=None, names=range(layout.num_fields), skiprows=header_lines,
                skip_blank_lines=False,  # keeps row i on line i + 1 + header_lines
                quoting=csv.QUOTE_NONE, engine="c", encoding="latin-1")
    skipped = 0
    try:
        df = pd.read_csv(path, **read)
    except pd.errors.ParserError as exc:  # a line with too many fields
        if on_bad_lines == "error":
            m = re.search(r"Expected \d+ fields in line (\d+), saw (\d+)", str(exc))
            line = int(m.group(1)) if m else None
            raise DataError(path, _bad_line(path, line, layout, f"{m.group(2)} fields" if m else str(exc)),
                            line=line) from None
        df = pd.read_csv(path, on_bad_lines="skip", **read)
        skipped = _count_lines(path) - header_lines - len(df)
    except (OSError, UnicodeError, ValueError) as exc:
        raise DataError(path, f"cannot be read: {exc}") from None

    blank = df.isna().all(axis=1).to_numpy()
    cols = [pd.to_numeric(df[p], errors="coerce").to_numpy(np.float64) for p in positions]
    users, items, ratings, times = cols
    lo = 0.5 if layout.half_stars else 1.0
    # Each check, in the order its message should win when a line fails several.
    checks = [
        (np.isnan(users) | np.isnan(items) | np.isnan(ratings) | np.isnan(times),
         "a missing or non-numeric field"),
        ((users < 0) | (items < 0) | (users % 1 != 0) | (items % 1 != 0) | (users >= _MAX_ID) | (items >= _MAX_ID),
         "an id that is not a whole number from 0 to 2**53 - 1"),
        ((ratings < lo) | (ratings > 5) | (ratings * (2 if layout.half_stars else 1) % 1 != 0),
         f"a rating outside {'0.5, 1.0, ..., 5.0' if layout.half_stars else '1..5'}"),
        ((times < 0) | (times % 1 != 0) | (times >= _MAX_SECONDS),
         "a timestamp that is not whole seconds from 0 (1970) to before the year 3000"),
    ] + [(df[p].notna().to_numpy(), "a single ':' separator") for p in layout.empty]
    bad = np.zeros(len(df), bool)
    for mask, _ in checks:
        bad |= mask
    bad &= ~blank
    if on_bad_lines == "error" and bad.any():
        row = int(np.argmax(bad))
        problem = next(p for m, p in checks if m[row])
        line = row + 1 + header_lines
        raise DataError(path, _bad_line(path, line, layout, problem), line=line)
    keep = ~bad & ~blank
    if bad.any():
        skipped += int(bad.sum())
    if skipped:
        log.warning("%s: skipped %d bad line(s)", path, skipped)
    rating_dtype = np.float32 if layout.half_stars else np.int8
    return (users[keep].astype(np.int64), items[keep].astype(np.int64),
            ratings[keep].astype(rating_dtype), times[keep].astype(np.int64), skipped)


def _header_positions(path: Path, layout: _Layout) -> tuple[int, int, int, int]:
    """Field index of each of `layout.names` in the header line (RecBole's `:type` ignored)."""
    with open(path, encoding="latin-1", newline="") as f:
        first = f.readline().rstrip("\r\n")
    header = [h.split(":")[0].strip() for h in first.split(layout.sep)]
    missing = [n for n in layout.names if n not in header]
    if missing:
        raise DataError(path, f"header {first!r} lacks column(s) {', '.join(missing)}; "
                              f"expected {layout.sep.join(layout.names)!r}", line=1)
    return tuple(header.index(n) for n in layout.names)  # type: ignore[return-value]


def _bad_line(path: Path, line: int | None, layout: _Layout, problem: str) -> str:
    """The message for a bad line: what it has, what was expected, and the line itself."""
    text = ""
    if line is not None:
        with open(path, encoding="latin-1", newline="") as f:
            got = next(itertools.islice(f, line - 1, None), "")
        text = f": {got.rstrip(chr(13) + chr(10))[:120]!r}"
    return f"line has {problem}; expected {layout.expected}{text}"


def _count_lines(path: Path) -> int:
    """Lines in a file, counting a last line without a newline."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


# ----------------------------------------------------------------------------------------------
# titles


def _decode(path: Path) -> str:
    """UTF-8 text, or latin-1 when it is not valid UTF-8 (older MovieLens copies)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _titles(path: Path, rows: list[list[str]], expected: str, header: int = 0,
            cols: tuple[int, int, int | None] = (0, 1, None)) -> dict[int, tuple[str, float]]:
    """item id -> (title, year or NaN) from split lines (one per item: thousands, not ratings).

    `cols` gives the id, title and (optional) year fields. A trailing ` (YYYY)` moves from the
    title to the year. Blank lines are skipped; a line without an integer id and a title raises
    DataError with its 1-based number (`header` lines come first and are not read).
    """
    id_col, title_col, year_col = cols
    out: dict[int, tuple[str, float]] = {}
    for number, fields in enumerate(rows[header:], header + 1):
        if not any(f.strip() for f in fields):
            continue
        if len(fields) <= max(c for c in cols if c is not None) or not fields[id_col].strip().isdigit():
            raise DataError(path, f"malformed line {' '.join(fields)[:120]!r}; expected {expected}",
                            line=number)
        title, year = fields[title_col].strip(), np.nan
        if year_col is not None and re.fullmatch(r"\d{4}", fields[year_col].strip()):
            year = float(fields[year_col])
        if m := _YEAR_SUFFIX.match(title):
            title, year = m.group(1), float(m.group(2))
        out[int(fields[id_col])] = (title, year)
    return out


__all__ = ["ML100KReader", "ML1MReader", "MLLatestSmallReader"]
