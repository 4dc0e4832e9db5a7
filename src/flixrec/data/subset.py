"""Subsets: which ratings a run uses (the `data/subset` config group).

Each option in `conf/data/subset/` builds one of the callables below with `_target_`; the
datamodule calls it on the parsed table, `Ratings -> Ratings`, before splitting:

    python train.py data=netflix data.root=DIR data/subset=sample_users data.subset.n_users=20000
    python train.py data=ml-1m data.root=DIR data/subset=kcore data.subset.min_rating=4

Every option first applies the positive threshold `min_rating` (default None: every rating is a
positive, as in the notebook; otherwise ratings below it are dropped from the data, so they are
neither positives nor "rated" when evaluation negatives are drawn), then selects rows on what is
left: "most active", "k-core" and "window" all count positives. Whole-array numpy only: a few
`bincount`s per option (per iteration for k-core), never a loop over users or ratings.
A subset that leaves no users raises ConfigError naming the option, its values and why.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from flixrec.data.ratings import Ratings
from flixrec.errors import ConfigError

log = logging.getLogger(__name__)

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(kw_only=True)
class Subset:
    """Base of the options: applies `min_rating`, then the option's `select`, then takes the
    rows. `min_rating` None keeps every rating; otherwise ratings below it are dropped."""

    min_rating: float | None = None

    option: ClassVar[str] = "subset"

    def __call__(self, table: Ratings) -> Ratings:
        """The subset of `table` (ids re-densified by `Ratings.take`); `table` itself when every
        row is kept. Logs the resulting counts; ConfigError when no user is left."""
        keep = self.select(table, self._positives(table))
        if keep is not None and not keep.any():
            raise ConfigError(f"data/subset={self} leaves no users: {self.why_empty(table)}")
        out = table if keep is None else table.take(keep)
        log.info("subset %s: %d ratings, %d users, %d items (of %d ratings, %d users, %d items)",
                 self, len(out), out.num_users, out.num_items, len(table), table.num_users,
                 table.num_items)
        return out

    def select(self, table: Ratings, keep: np.ndarray | None) -> np.ndarray | None:
        """Rows to keep: a bool mask (R,) within `keep` (None: every row), or None for all rows.
        Options narrow it; the base keeps `keep` as it is."""
        return keep

    def why_empty(self, table: Ratings) -> str:
        """One clause saying why `select` kept nothing, for the error message."""
        return "no rows selected"

    def __str__(self) -> str:
        names = [f.name for f in dataclasses.fields(self) if f.name != "min_rating"] + ["min_rating"]
        args = ", ".join(f"{name}={getattr(self, name)!r}" for name in names)
        return f"{self.option}({args})"

    def _positives(self, table: Ratings) -> np.ndarray | None:
        if self.min_rating is None:
            return None
        keep = table.ratings >= self.min_rating
        if not keep.any():
            lo, hi = (table.ratings.min(), table.ratings.max()) if len(table) else (None, None)
            raise ConfigError(f"data/subset={self} leaves no users: no rating is at least "
                              f"data.subset.min_rating={self.min_rating} (ratings range {lo}..{hi})")
        return keep


@dataclass(kw_only=True)
class Full(Subset):
    """All ratings (at or above `min_rating`, when given). The default option."""

    option: ClassVar[str] = "full"


def _counts(ids: np.ndarray, keep: np.ndarray | None, n: int) -> np.ndarray:
    """int64 (n,) occurrences of each id among the kept rows."""
    return np.bincount(ids if keep is None else ids[keep], minlength=n)


def _check_n(option: Subset, n: int) -> None:
    if n < 1:
        raise ConfigError(f"data/subset={option}: data.subset.n_users={n} must be at least 1")


@dataclass(kw_only=True)
class SampleUsers(Subset):
    """`n_users` users drawn uniformly without replacement (numpy PCG64 seeded by `seed`) from
    the users with at least one positive; all their positives are kept. Deterministic for a
    table and seed; with fewer users than `n_users`, every user is kept (and a warning logged)."""

    n_users: int = 10000
    seed: int = 0
    option: ClassVar[str] = "sample_users"

    def select(self, table: Ratings, keep: np.ndarray | None) -> np.ndarray | None:
        _check_n(self, self.n_users)
        present = np.flatnonzero(_counts(table.users, keep, table.num_users))
        if self.n_users >= len(present):
            log.warning("data.subset.n_users=%d is not less than the %d users present; keeping "
                        "all of them", self.n_users, len(present))
            return keep
        chosen = np.zeros(table.num_users, bool)
        chosen[np.random.default_rng(self.seed).choice(present, self.n_users, replace=False)] = True
        rows = chosen[table.users]
        return rows if keep is None else rows & keep


@dataclass(kw_only=True)
class TopUsers(Subset):
    """The `n_users` users with the most positives; ties at the boundary go to the lower
    original customer id (dense ids keep id order), so the choice never depends on file order."""

    n_users: int = 10000
    option: ClassVar[str] = "top_users"

    def select(self, table: Ratings, keep: np.ndarray | None) -> np.ndarray | None:
        _check_n(self, self.n_users)
        counts = _counts(table.users, keep, table.num_users)
        if self.n_users >= int((counts > 0).sum()):
            log.warning("data.subset.n_users=%d is not less than the %d users present; keeping "
                        "all of them", self.n_users, int((counts > 0).sum()))
            return keep
        # stable sort of -count: equal counts stay in increasing user (= customer id) order
        top = np.argsort(-counts, kind="stable")[:self.n_users]
        chosen = np.zeros(table.num_users, bool)
        chosen[top] = True
        rows = chosen[table.users]
        return rows if keep is None else rows & keep


@dataclass(kw_only=True)
class KCore(Subset):
    """The k-core: the largest set of positives in which every user has at least
    `min_user_ratings` and every movie at least `min_item_ratings`. Found by repeatedly dropping
    the rows of users and movies below their minimum until nothing changes (dropping never helps
    a row back in, so the fixed point is the unique maximal such set). Each round is two
    `bincount`s over the rows still in play, which shrink every round."""

    min_user_ratings: int = 5
    min_item_ratings: int = 5
    option: ClassVar[str] = "kcore"

    def select(self, table: Ratings, keep: np.ndarray | None) -> np.ndarray | None:
        if self.min_user_ratings < 1 or self.min_item_ratings < 1:
            raise ConfigError(f"data/subset={self}: data.subset.min_user_ratings and "
                              f"data.subset.min_item_ratings must be at least 1")
        rows = np.arange(len(table)) if keep is None else np.flatnonzero(keep)
        users, items = table.users[rows], table.items[rows]
        rounds = 0
        while True:
            rounds += 1
            ok = ((np.bincount(users, minlength=table.num_users) >= self.min_user_ratings)[users]
                  & (np.bincount(items, minlength=table.num_items) >= self.min_item_ratings)[items])
            if ok.all():
                break
            rows, users, items = rows[ok], users[ok], items[ok]
            if len(rows) == 0:
                break
        log.info("kcore: stable after %d round(s)", rounds)
        if keep is None and len(rows) == len(table):
            return None
        mask = np.zeros(len(table), bool)
        mask[rows] = True
        return mask

    def why_empty(self, table: Ratings) -> str:
        return (f"removing users with fewer than {self.min_user_ratings} and movies with fewer "
                f"than {self.min_item_ratings} positives, repeatedly, removes every rating "
                f"(the busiest user has {int(np.bincount(table.users).max(initial=0))})")


@dataclass(kw_only=True)
class DateWindow(Subset):
    """Ratings dated from `start` to `end`, both inclusive, as `YYYY-MM-DD` strings (None: open
    on that side). Dates are UTC days, whatever the table's time unit."""

    start: str | None = None
    end: str | None = None
    option: ClassVar[str] = "date_window"

    def select(self, table: Ratings, keep: np.ndarray | None) -> np.ndarray | None:
        start, end = self._day("start"), self._day("end")
        if start is not None and end is not None and start > end:
            raise ConfigError(f"data/subset={self}: data.subset.start is after data.subset.end")
        if start is None and end is None:
            return keep
        days = table.days()
        rows = np.ones(len(table), bool)
        if start is not None:
            rows &= days >= start
        if end is not None:
            rows &= days <= end
        return rows if keep is None else rows & keep

    def why_empty(self, table: Ratings) -> str:
        days = table.days()
        first, last = (_iso(int(days.min())), _iso(int(days.max()))) if len(days) else ("-", "-")
        return f"no rating falls in the window (the ratings run from {first} to {last})"

    def _day(self, name: str) -> int | None:
        """Days since 1970-01-01 of the `start` / `end` field; ConfigError if malformed."""
        value = getattr(self, name)
        if value is None:
            return None
        if isinstance(value, dt.date):  # a YAML loader may already have made it a date
            return (value - dt.date(1970, 1, 1)).days
        text = str(value).strip()
        try:
            if not _DATE.fullmatch(text):
                raise ValueError
            return (dt.date.fromisoformat(text) - dt.date(1970, 1, 1)).days
        except ValueError:
            raise ConfigError(f"data/subset={self}: data.subset.{name}={value!r} is not a date "
                              f"in the form YYYY-MM-DD") from None


def _iso(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()
