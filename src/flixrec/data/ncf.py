"""The NCF authors' pre-split files (He et al., 2017; github.com/hexiangnan/neural_collaborative_filtering).

`DIR/<prefix>.train.rating` and `DIR/<prefix>.test.rating` hold `user<TAB>item<TAB>rating<TAB>
timestamp` with 0-based ids, the test file one rating per user (their latest);
`DIR/<prefix>.test.negative` holds, per test user, `(user,item)` followed by the sampled movies
the test item is ranked against (99 for ml-1m), tab-separated. `NCFReader` reads the two rating
files into one table; `data.split=ncf` then takes each user's test rating from the test file and
its candidates from the negatives file, so a run is scored on exactly the authors' candidates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from flixrec.data.movielens import _Layout, _read_ratings
from flixrec.data.ratings import Ratings, compact_item_dtype, dense_ids
from flixrec.errors import DataError

_EXPECTED = "user<TAB>item<TAB>rating<TAB>timestamp"


def _layout(root: Path, prefix: str, part: str) -> tuple[_Layout, Path]:
    name = f"{prefix}.{part}.rating"
    return _Layout(name, _EXPECTED, "\t", 4), root / name


class NCFReader:
    """Reads `<prefix>.train.rating` and `<prefix>.test.rating` from `root` into one `Ratings`
    (ids dense in the order of the files' ids, times in seconds, no titles). `prefix` is the
    data set's file prefix, `ml-1m` or `pinterest-20` in the authors' repository."""

    name = "ncf"
    version = 1

    def __init__(self, on_bad_lines: str = "error", prefix: str = "ml-1m") -> None:
        if on_bad_lines not in ("error", "skip"):
            raise ValueError(f"on_bad_lines={on_bad_lines!r}: choose 'error' or 'skip'")
        self.on_bad_lines, self.prefix = on_bad_lines, prefix

    def options(self) -> dict:
        return {"on_bad_lines": self.on_bad_lines, "prefix": self.prefix}

    def files(self, root: str | Path) -> list[Path]:
        root = Path(root)
        paths = [_layout(root, self.prefix, part)[1] for part in ("train", "test")]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            where = "is not a directory" if not root.is_dir() else f"lacks {' and '.join(missing)}"
            raise DataError(root, f"{where}: data=ncf-{self.prefix} expects the NCF authors' "
                                  f"{self.prefix}.train.rating, .test.rating and .test.negative in it")
        return paths

    def parse(self, root: str | Path) -> Ratings:
        columns = [[], [], [], []]
        skipped_lines = {}
        for path in self.files(root):
            layout = _layout(Path(root), self.prefix, path.name.split(".")[-2])[0]
            *cols, skipped = _read_ratings(path, layout, self.on_bad_lines)
            if len(cols[0]) == 0:
                raise DataError(path, "no ratings found")
            for acc, col in zip(columns, cols):
                acc.append(col)
            if skipped:
                skipped_lines[path.name] = skipped
        users, items, ratings, times = (np.concatenate(c) for c in columns)
        dense_users, user_ids = dense_ids(users)
        dense_items, item_ids = dense_ids(items)
        return Ratings(users=dense_users, items=dense_items.astype(compact_item_dtype(len(item_ids))),
                       ratings=ratings, times=times, user_ids=user_ids, item_ids=item_ids,
                       time_unit="second",
                       extra={"source": f"{self.prefix}.train.rating + .test.rating",
                              "skipped_lines": skipped_lines})


def read_ncf_test(root: str | Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, item ids) int64 of `<prefix>.test.rating`: each user's test rating. A bad
    line always stops the run, whatever `data.on_bad_lines` says: skipping it would quietly
    drop a user from the comparison with the authors' figures."""
    layout, path = _layout(Path(root), prefix, "test")
    users, items, _, _, _ = _read_ratings(path, layout, "error")
    return users, items


def read_ncf_negatives(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user ids (N,), test item ids (N,), candidate ids (N, n), 1-based line numbers (N,)),
    all int64, of a `.test.negative` file: lines `(user,item)<TAB>neg_1<TAB>...<TAB>neg_n`,
    every line with the same n (the count most lines have; trailing whitespace and blank lines
    are ignored). The first bad line,
    in file order, raises DataError with its number (a file of held-out candidates is never
    skipped over: a run scored on part of it would not be comparable)."""
    if not path.is_file():
        raise DataError(path, "not found: data.split=ncf ranks each test item against the "
                              "candidates in this file")
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise DataError(path, f"cannot be read: {exc}") from None
    # split at newlines only (str.splitlines would also split at form feeds and other
    # separators latin-1 can hold, shifting every later line number); read_text made CRLF LF
    lines = pd.Series(text.split("\n"), dtype=object).str.rstrip()
    numbers = np.flatnonzero((lines != "").to_numpy()) + 1   # 1-based line numbers kept
    lines = lines[lines != ""].reset_index(drop=True)
    if len(lines) == 0:
        raise DataError(path, "has no lines")
    fields = (lines.str.count("\t") + 1).to_numpy()
    n = int(pd.Series(fields).mode().max()) - 1  # candidates per line, as most lines have
    parts = lines.str.split("\t", expand=True)
    pair = parts[0].str.extract(r"^\((\d{1,18}),(\d{1,18})\)$")  # ids that fit int64
    bad = (fields != n + 1) | pair.isna().any(axis=1).to_numpy()
    negatives = parts.iloc[:, 1:n + 1]
    whole = np.column_stack([negatives[c].str.fullmatch(r"\d{1,18}").fillna(False).to_numpy(bool)
                             for c in negatives.columns]) if n else np.zeros((len(lines), 0), bool)
    bad |= ~whole.all(axis=1)
    if n < 1:
        raise DataError(path, "lines list no candidates after '(user,item)' (expected "
                              "'(user,item)<TAB>candidate<TAB>...')", line=int(numbers[0]))
    if bad.any():
        row = int(np.argmax(bad))
        if fields[row] != n + 1:
            what = f"it has {fields[row] - 1}"
        elif pd.isna(pair.iloc[row, 0]):
            what = f"it starts with {parts.iloc[row, 0][:40]!r}"
        else:
            field = int(np.argmin(whole[row]))
            what = f"candidate {field + 1} is {negatives.iloc[row, field][:40]!r}"
        raise DataError(path, f"line is not '(user,item)<TAB>candidate<TAB>...' with {n} whole-number "
                              f"candidates, as most lines have: {what}", line=int(numbers[row]))
    return (pair[0].to_numpy(np.int64), pair[1].to_numpy(np.int64),
            negatives.to_numpy().astype(np.int64), numbers.astype(np.int64))
