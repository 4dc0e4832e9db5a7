"""The parsed-ratings table every reader produces, and its on-disk cache.

A `Ratings` is a set of aligned 1-D numpy columns with dense ids. The cache is a directory of
`.npy` columns plus `items.parquet` (titles, years) and `meta.json` (the key), written into a
temporary directory and renamed into place under a file lock, so a half-written cache is never
seen and parallel jobs parse the same files once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from filelock import FileLock

log = logging.getLogger(__name__)

COLUMNS = ("users", "items", "ratings", "times")


@dataclass
class Ratings:
    """Aligned rating columns with dense ids.

    users:   int32 (R,), dense user index in [0, num_users)
    items:   int32 or int16 (R,), dense item index in [0, num_items)
    ratings: int8 (R,) stars, or float32 where the source has half stars
    times:   int32 days since 1970-01-01 (`time_unit="day"`) or int64 seconds (`"second"`)
    user_ids: int64 (num_users,), original customer id of each dense user
    item_ids: int64 (num_items,), original movie id of each dense item
    item_titles / item_years: per dense item, title (str or None) and release year (NaN if unknown)
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    times: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    time_unit: str = "day"
    item_titles: np.ndarray | None = None
    item_years: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)

    def days(self) -> np.ndarray:
        """Rating dates as int32 days since 1970-01-01, whatever the time unit."""
        if self.time_unit == "day":
            return self.times.astype(np.int32, copy=False)
        return (self.times // 86400).astype(np.int32)

    def take(self, rows: np.ndarray) -> "Ratings":
        """A new table of the selected rows (bool mask or index array), ids re-densified."""
        users, items = self.users[rows], self.items[rows]
        user_dense, user_keep = dense_ids(users, self.num_users)
        item_dense, item_keep = dense_ids(items, self.num_items)
        return replace(
            self,
            users=user_dense,
            items=item_dense.astype(self.items.dtype, copy=False),
            ratings=self.ratings[rows],
            times=self.times[rows],
            user_ids=self.user_ids[user_keep],
            item_ids=self.item_ids[item_keep],
            item_titles=None if self.item_titles is None else self.item_titles[item_keep],
            item_years=None if self.item_years is None else self.item_years[item_keep],
        )


def dense_ids(ids: np.ndarray, upper: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to 0..n-1 preserving order. O(R) with a lookup table when ids are small.

    Returns (dense int32 (R,), kept original ids in increasing order (n,)).
    """
    if len(ids) == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    if upper is None:
        upper = int(ids.max()) + 1
    if ids.min() < 0:
        raise ValueError("ids must be non-negative")
    if upper <= 64 * max(len(ids), 1) + 1_000_000:
        present = np.zeros(upper, dtype=bool)
        present[ids] = True
        kept = np.flatnonzero(present)
        lookup = np.cumsum(present, dtype=np.int64).astype(np.int32) - 1
        return lookup[ids], kept.astype(np.int64)
    kept, inverse = np.unique(ids, return_inverse=True)
    return inverse.astype(np.int32), kept.astype(np.int64)


def compact_item_dtype(num_items: int) -> np.dtype:
    return np.dtype(np.int16) if num_items <= np.iinfo(np.int16).max else np.dtype(np.int32)


# ----------------------------------------------------------------------------------------------
# cache


def file_fingerprint(path: Path, sample_bytes: int = 65536) -> dict:
    """Size, mtime and a hash of the first and last `sample_bytes` of a file."""
    st = path.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        h.update(f.read(sample_bytes))
        if st.st_size > sample_bytes:
            f.seek(max(st.st_size - sample_bytes, sample_bytes))
            h.update(f.read(sample_bytes))
    return {"name": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample": h.hexdigest()}


def cache_key(files: Sequence[Path], parser: str, version: int, options: dict) -> dict:
    """Everything that, if changed, invalidates a cache: source files, parser version, options."""
    return {
        "parser": parser,
        "version": version,
        "options": options,
        "files": [file_fingerprint(Path(p)) for p in files],
    }


def default_cache_dir(root: Path) -> Path:
    """`root/.flixrec_cache` when that can be written, else a per-root folder under
    ~/.cache/flixrec. Tried by writing, not by os.access: root may write to read-only folders."""
    root = Path(root).resolve()
    local = root / ".flixrec_cache"
    if local.is_dir() or (root.stat().st_mode & 0o222 and _can_create(local)):
        return local
    tag = hashlib.blake2b(str(root).encode(), digest_size=8).hexdigest()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "flixrec" / f"{root.name}-{tag}"


def _can_create(folder: Path) -> bool:
    try:
        folder.mkdir()
    except OSError:
        return False
    return True


def save_ratings(table: Ratings, target: Path, key: dict) -> None:
    """Write `table` as a cache directory at `target`, atomically (temp dir + rename)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name in COLUMNS + ("user_ids", "item_ids"):
            _save_npy(tmp / f"{name}.npy", getattr(table, name))
        items = pd.DataFrame({"item_id": table.item_ids})
        if table.item_titles is not None:
            items["title"] = pd.Series(table.item_titles, dtype="string")
            items["year"] = pd.Series(table.item_years, dtype="float64")
        items.to_parquet(tmp / "items.parquet", index=False)
        meta = {"key": key, "rows": len(table), "time_unit": table.time_unit,
                "has_titles": table.item_titles is not None, "extra": table.extra}
        _write_text(tmp / "meta.json", json.dumps(meta))  # written last: its presence marks completion
        _fsync_dir(tmp)
        if target.exists():
            trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(target, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_ratings(target: Path, key: dict | None = None, mmap: bool = False) -> Ratings:
    """Read a cache directory; raises if it is incomplete, inconsistent or keyed differently."""
    target = Path(target)
    meta = json.loads((target / "meta.json").read_text())
    if key is not None and meta["key"] != key:
        raise KeyError("cache key differs from the source files")
    cols = {name: np.load(target / f"{name}.npy", mmap_mode="r" if mmap else None)
            for name in COLUMNS + ("user_ids", "item_ids")}
    if any(len(cols[c]) != meta["rows"] for c in COLUMNS):
        raise ValueError("cache columns have inconsistent lengths")
    items = pd.read_parquet(target / "items.parquet")
    titles = years = None
    if meta["has_titles"]:
        titles = items["title"].astype(object).where(items["title"].notna(), None).to_numpy()
        years = items["year"].to_numpy(dtype=np.float64)
    return Ratings(time_unit=meta["time_unit"], item_titles=titles, item_years=years,
                   extra=meta.get("extra", {}), **cols)


def cached(
    build: Callable[[], Ratings],
    files: Sequence[Path],
    cache_dir: Path,
    name: str,
    parser: str,
    version: int,
    options: dict,
) -> Ratings:
    """Return the cached table for `files`, building it with `build()` once if needed.

    The lock makes concurrent callers wait for one build; a cache that fails to load is rebuilt
    with a warning. `build` runs only while the lock is held.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / name
    key = cache_key(files, parser, version, options)
    with FileLock(str(cache_dir / f"{name}.lock")):
        if (target / "meta.json").exists():
            try:
                return load_ratings(target, key)
            except KeyError:
                log.info("Source files changed since %s was written; rebuilding it", target)
            except Exception as exc:  # any unreadable cache is rebuilt, never trusted
                log.warning("Cache %s could not be loaded (%s); rebuilding it", target, exc)
        # temp and old copies are only made under this lock, so any seen now are the leftovers
        # of a writer that was killed; they can be as large as the cache
        for stale in [*cache_dir.glob(f".{name}.tmp-*"), *cache_dir.glob(f".{name}.old-*")]:
            shutil.rmtree(stale, ignore_errors=True)
        table = build()
        save_ratings(table, target, key)
        log.info("Wrote ratings cache %s (%d ratings)", target, len(table))
        return table


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array))
        f.flush()
        os.fsync(f.fileno())


def _write_text(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_cached(reader, root: str | Path, cache_dir: str | Path | None = None) -> Ratings:
    """Parse `root` with `reader` through the cache.

    `reader` has `name: str`, `version: int`, `options() -> dict`, `files(root) -> list[Path]`
    (raising DataError naming the expected files when there are none) and `parse(root) -> Ratings`.
    """
    root = Path(root)
    files = reader.files(root)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(root)
    return cached(lambda: reader.parse(root), files, cache_dir, reader.name,
                  f"{type(reader).__module__}.{type(reader).__name__}", reader.version, reader.options())
