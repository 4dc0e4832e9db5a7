"""The LightningDataModule that owns the data: parse, cache, subset, split, candidates, batches."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor

from flixrec.data.ratings import Ratings, read_cached
from flixrec.data.sampling import (UnratedItems, is_member, rated_items,
                                    sample_candidates)
from flixrec.data.split import (Split, dense_index, leave_one_out, map_probe, probe, recency_key,
                                splitmix64, temporal)
from flixrec.data.subset import Full
from flixrec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

SPLITS = ("leave_one_out", "temporal", "probe", "ncf")


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers, so streams for (seed, purpose, epoch, rank) differ."""
    x = np.array([0], dtype=np.uint64)
    for p in parts:
        x = splitmix64(x ^ np.uint64(int(p) & 0xFFFFFFFFFFFFFFFF))
    return int(x[0] >> np.uint64(1))


def recency_weights(users: Tensor, keys: Tensor, num_users: int, half_life: float) -> Tensor:
    """float32 (R,) training weight of each rating: 0.5 ** (r / half_life), where r counts the
    user's later training ratings (0 for their latest; `keys` orders one user's ratings by
    time, as `split.recency_key`), scaled so the weights average 1. Two sorts, no loop."""
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(users[order], stable=True).indices]   # by user, then by time
    counts = torch.bincount(users, minlength=num_users)
    starts = torch.cumsum(counts, 0) - counts
    position = torch.empty_like(order)
    position[order] = torch.arange(len(order))
    later = counts[users] - 1 - (position - starts[users])
    weights = torch.pow(0.5, later.double() / half_life)
    return (weights / weights.mean()).float()


def _generated_here(root: Path, table: Ratings) -> bool:
    """Does `root` hold a complete data set of flixrec's generator (this version) whose counts
    match the parsed `table`, so that its truth file describes these ratings? (The oracle of
    data=netflix on generated files; replaced rating files must not get another set's truth.)"""
    from flixrec.data.synthetic import GENERATOR_VERSION, TRUTH, read_marker

    marker = read_marker(root)
    if marker is None or marker.get("version") != GENERATOR_VERSION or not (root / TRUTH).is_file():
        return False
    stats = marker.get("stats", {})
    files = [root / f for f in stats.get("files", [])]
    if not files or not all(f.is_file() for f in files):
        return False
    if sum(f.stat().st_size for f in files) != stats.get("bytes"):  # rewritten or replaced files
        return False
    return (stats.get("ratings"), stats.get("users"), stats.get("movies")) == \
        (len(table), table.num_users, table.num_items)


def _first_duplicate(values: np.ndarray) -> int | None:
    """Index of the first element equal to an earlier one; None when all differ."""
    _, first = np.unique(values, return_index=True)
    repeated = np.ones(len(values), bool)
    repeated[first] = False
    return int(np.argmax(repeated)) if repeated.any() else None


class TrainBatches:
    """Sized iterable of shuffled positive batches {"users", "items"} (int64 (B,)).

    Each epoch draws one permutation seeded by (seed, epoch); with `world_size` > 1 each rank
    takes an equal-length stride of it, so all ranks run the same number of steps.

    With `device` (e.g. the trainer's CUDA device), the training pairs are copied there once,
    on first iteration, and the permutation and every batch gather run there: batches arrive
    on the device with no host round trip (Lightning's transfer is then a no-op). The order
    then comes from that device's generator, so it differs from a CPU run with the same seed.
    """

    def __init__(self, users: Tensor, items: Tensor, batch_size: int, seed: int,
                 epoch: Callable[[], int], rank: int = 0, world_size: int = 1,
                 device: torch.device | str | None = None, weights: Tensor | None = None) -> None:
        self.users, self.items, self.weights = users, items, weights
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch
        self.rank, self.world_size = rank, world_size
        self.per_rank = len(users) // world_size
        self.device = None if device is None else torch.device(device)

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        if self.device is not None and self.users.device != self.device:
            self.users, self.items = self.users.to(self.device), self.items.to(self.device)
            if self.weights is not None:
                self.weights = self.weights.to(self.device)
        gen = torch.Generator(device=self.users.device).manual_seed(
            derive_seed(self.seed, 1, self.epoch()))
        order = torch.randperm(len(self.users), generator=gen, device=self.users.device)
        order = order[self.rank: self.per_rank * self.world_size: self.world_size]
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = {"users": self.users[idx], "items": self.items[idx]}
            if self.weights is not None:
                batch["weights"] = self.weights[idx]
            yield batch


class EvalBatches:
    """Sized iterable of fixed candidate batches {"users": (B,), "items": (B, 1+n)}; with
    `world_size` > 1 each rank takes a contiguous share of the users.

    Given `seen_keys` (sorted training pair keys) and `num_items`, each batch also carries what
    full-ranking evaluation must exclude: "seen_rows" and "seen_items" (int64 (S,), the batch
    rows and the items they rated in training, rows ascending) and "num_items" (an int). With
    `full_mask` (bool, aligned with `users`) only the marked users are to be fully ranked: the
    batch then carries "full_rows" (int64, their rows in the batch, ascending), and "seen_rows"
    index into those rows.
    """

    def __init__(self, users: Tensor, items: Tensor, batch_size: int, rank: int = 0,
                 world_size: int = 1, seen_keys: Tensor | None = None,
                 num_items: int | None = None, full_mask: Tensor | None = None) -> None:
        share = math.ceil(len(users) / world_size)
        self.users = users[rank * share:(rank + 1) * share]
        self.items = items[rank * share:(rank + 1) * share]
        self.full_mask = None if full_mask is None else full_mask[rank * share:(rank + 1) * share]
        self.batch_size = batch_size
        self.seen_keys, self.num_items = seen_keys, num_items

    def __len__(self) -> int:
        return math.ceil(len(self.users) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for start in range(0, len(self.users), self.batch_size):
            batch = {"users": self.users[start:start + self.batch_size],
                     "items": self.items[start:start + self.batch_size]}
            if self.seen_keys is not None:
                ranked = batch["users"]
                if self.full_mask is not None:
                    batch["full_rows"] = self.full_mask[start:start + self.batch_size].nonzero().view(-1)
                    ranked = ranked[batch["full_rows"]]
                batch["seen_rows"], batch["seen_items"] = rated_items(self.seen_keys, ranked, self.num_items)
                batch["num_items"] = self.num_items
            yield batch


class RatingsDataModule(pl.LightningDataModule):
    """Ratings from raw files to tensor batches.

    Args:
        name: data set name reported in metrics.json (e.g. "netflix", "synthetic").
        root: directory of raw files.
        reader: a reader factory taking `on_bad_lines` (see `ratings.read_cached`), e.g.
            `NetflixReader`; Hydra passes it as a partial.
        on_bad_lines: "error" stops at the first bad line; "skip" drops bad lines and counts them.
        cache_dir: where the parsed cache goes (default: next to the data, or ~/.cache).
        generate: if given, `root` is synthetic data generated with these parameters on first use.
        subset: optional callable `Ratings -> Ratings` selecting the data a run uses.
        split: "leave_one_out" (per user: latest rating test, second latest validation),
            "temporal" (global cut by date at `temporal_fraction`; see `split.temporal`) or
            "probe" (`probe.txt` in `root` as test positives; see `split.probe`) or "ncf"
            (the NCF authors' `<prefix>.test.rating` as test positives, ranked against the
            candidates of their `<prefix>.test.negative`; see `data.ncf`).
        num_negatives: training negatives per positive, resampled every epoch.
        num_test_negatives: sampled unseen items ranked against each held-out item.
        batch_size: training positives per batch (each brings `num_negatives` negatives).
        eval_batch_size: users per evaluation batch.
        temporal_fraction: share of ratings, ordered by date, before the temporal cut.
        seed: seeds the split's tie rule, the candidates and the training order and negatives,
            each through its own stream, so candidates do not depend on the model or batch size.
        batches_on_device: keep the training pairs on the trainer's device and shuffle and slice
            them there (for GPUs: no host-to-device copy per batch).
        negatives_exclude: which movies training negatives avoid: "train" (the movies the user
            rated in training, as in RecBole and the NCF authors' code) or "all" (every movie the
            user rated, held-out ones included, as the notebook did). "all" leaks: the held-out
            movie is then the one candidate never drawn as a negative, which inflates validation
            and test figures (bench/ACCURACY.md measures by how much); it exists to reproduce
            the notebook's protocol and is logged as a warning.
        full_ranking_users: rank only this many evaluated users, a seeded random sample (the
            same for every model of a seed), against every unrated item in the test's full
            ranking; None: all of them. Full ranking of all 480k Netflix users takes minutes
            on a CPU; 20,000 users estimate an HR@10 near 0.13 within about +-0.005 (two
            standard errors).
    """

    def __init__(self, name: str, root: str, reader: Callable[..., Any], on_bad_lines: str = "error",
                 cache_dir: str | None = None,
                 generate: dict | None = None, subset: Callable[[Ratings], Ratings] | None = None,
                 split: str = "leave_one_out", num_negatives: int = 4,
                 num_test_negatives: int = 100, batch_size: int = 1024,
                 eval_batch_size: int = 2048, seed: int = 42, min_ratings: int = 3,
                 batches_on_device: bool = False,
                 temporal_fraction: float = 0.8, recency_half_life: float | None = None,
                 negatives_exclude: str = "train", full_ranking_users: int | None = None) -> None:
        super().__init__()
        if num_negatives < 1:
            raise ConfigError(f"data.num_negatives={num_negatives}: need at least 1 training negative per positive")
        if num_test_negatives < 1:
            raise ConfigError(f"data.num_test_negatives={num_test_negatives}: need at least 1 evaluation negative")
        if batch_size < 1 or eval_batch_size < 1:
            raise ConfigError("data.batch_size and data.eval_batch_size must be at least 1")
        if split not in SPLITS:
            raise ConfigError(f"data.split={split!r} is not known; choose one of {', '.join(SPLITS)}")
        if not 0.0 < temporal_fraction < 1.0:
            raise ConfigError(f"data.temporal_fraction={temporal_fraction}: must be between 0 and 1 "
                              f"(the share of ratings, by date, used for training)")
        if recency_half_life is not None and recency_half_life <= 0:
            raise ConfigError(f"data.recency_half_life={recency_half_life}: must be positive (ratings), "
                              f"or null for equal weights")
        if negatives_exclude not in ("train", "all"):
            raise ConfigError(f"data.negatives_exclude={negatives_exclude!r}: choose train (movies "
                              f"rated in training) or all (every rated movie; leaks held-out ones)")
        if min_ratings < (2 if split == "leave_one_out" else 1):
            raise ConfigError(f"data.min_ratings={min_ratings}: data.split={split} needs at least "
                              f"{2 if split == 'leave_one_out' else 1} rating(s) per evaluated user"
                              f"{' (a test and a validation rating)' if split == 'leave_one_out' else ''}")
        if full_ranking_users is not None and full_ranking_users < 1:
            raise ConfigError(f"data.full_ranking_users={full_ranking_users}: rank at least 1 user, "
                              f"or null for all of them")
        if on_bad_lines not in ("error", "skip"):
            raise ConfigError(f"data.on_bad_lines={on_bad_lines!r}: choose error or skip")
        if split == "ncf" and subset is not None and (not isinstance(subset, Full) or subset.min_rating is not None):
            raise ConfigError(f"data.split=ncf scores the NCF authors' fixed candidates, which "
                              f"data/subset={subset} would cut into; use data/subset=full")
        self.name, self.root, self.cache_dir = name, root, cache_dir
        self.reader = reader(on_bad_lines=on_bad_lines)
        self.generate, self.subset, self.split = generate, subset, split
        self.num_negatives, self.num_test_negatives = num_negatives, num_test_negatives
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.min_ratings = seed, min_ratings
        self.batches_on_device = batches_on_device
        self.on_bad_lines, self.temporal_fraction = on_bad_lines, temporal_fraction
        self.recency_half_life = recency_half_life
        self.negatives_exclude = negatives_exclude
        self.full_ranking_users = full_ranking_users
        self.full_rank_mask: Tensor | None = None  # which evaluated users full ranking ranks
        self.train_weights: Tensor | None = None
        self.table: Ratings | None = None
        self._generated = False  # synthetic data whose true preferences are known (true_scores)
        self._neg_state: tuple | None = None
        self._unrated: tuple[Tensor, UnratedItems] | None = None  # (keys it indexes, sampler)

    def _repeated_pairs_error(self, table: Ratings, seen_keys: Tensor, order: Tensor) -> DataError:
        """The error for (user, movie) pairs rated more than once: the split would test the
        latest copy while an earlier one trains, so the run stops. Names the source file(s),
        the first such pair by its original ids and dates, and how many pairs repeat."""
        repeat = seen_keys[1:] == seen_keys[:-1]
        first = int(torch.nonzero(repeat)[0])
        rows = order[seen_keys == seen_keys[first]].numpy()  # every copy of the first such pair
        user, item = int(table.users[rows[0]]), int(table.items[rows[0]])
        when = ", ".join(str(np.datetime64(int(t), "D" if table.time_unit == "day" else "s")).replace("T", " ")
                         for t in np.sort(table.times[rows]))
        files = self.reader.files(Path(self.root))
        where = files[0] if len(files) == 1 else f"{self.root} ({len(files)} rating files)"
        # one pair per run of equal sorted keys: count where a run of repeats starts
        pairs = int(repeat[0]) + int((repeat[1:] & ~repeat[:-1]).sum())
        return DataError(where, f"customer {table.user_ids[user]} rated movie {table.item_ids[item]} "
                                f"{len(rows)} times ({when}); {pairs} (customer, movie) pair(s) repeat. "
                                f"Each pair must appear once: the split would test a rating's latest "
                                f"copy while an earlier copy trains. Keep one rating per pair (e.g. "
                                f"the latest) and run again")

    # -- Lightning hooks --------------------------------------------------------------------

    def prepare_data(self) -> None:
        if self.generate is not None:
            from flixrec.data.synthetic import ensure_synthetic

            ensure_synthetic(Path(self.root), **self.generate)
        read_cached(self.reader, self.root, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        t0 = time.perf_counter()
        self.prepare_data()  # cheap when the cache exists; makes setup() usable on its own
        table = full = read_cached(self.reader, self.root, self.cache_dir)
        if self.subset is not None:
            table = self.subset(table)
        if len(table) == 0:
            raise ConfigError(f"data {self.name!r} at {self.root} has no ratings left after "
                              f"data/subset={self.subset}")
        self.table = table
        self._generated = self.generate is not None or _generated_here(Path(self.root), full)
        U, I = table.num_users, table.num_items
        users = torch.from_numpy(table.users.astype(np.int64))
        items = torch.from_numpy(table.items.astype(np.int64))
        sp = self._split(table)
        if len(sp.test_rows) == 0:
            why = {k: v for k, v in sp.stats.items() if k != "users_evaluated"}
            raise ConfigError(f"data.split={self.split} leaves no user of data {self.name!r} to "
                              f"evaluate (min_ratings={self.min_ratings}; {why})")
        train = torch.from_numpy(sp.train_rows)
        self.train_users, self.train_items = users[train], items[train]
        if self.recency_half_life is not None:
            self.train_weights = recency_weights(self.train_users, torch.from_numpy(recency_key(
                table.users[sp.train_rows], table.items[sp.train_rows], table.times[sp.train_rows], I,
                derive_seed(self.seed, 0))), U, self.recency_half_life)
        # every rating's pair key, sorted once; the training keys are the sorted keys of the
        # training rows (one sort of R keys instead of two: 4 s saved at 100M ratings)
        seen_keys, order = torch.sort(users * I + items)
        if (seen_keys[1:] == seen_keys[:-1]).any():
            raise self._repeated_pairs_error(table, seen_keys, order)
        in_train = torch.zeros(len(users), dtype=torch.bool)
        in_train[train] = True
        self.train_keys = seen_keys[in_train[order]]
        # every rating's key, kept only when training negatives must avoid them (negatives_exclude)
        self.all_keys = seen_keys if self.negatives_exclude == "all" else None
        if self.all_keys is not None:
            log.warning("data.negatives_exclude=all: training negatives avoid the held-out movies "
                        "too, which leaks them (the notebook's rule); validation and test figures "
                        "are inflated and not comparable with data.negatives_exclude=train")
        avoided = self.train_users if self.all_keys is None else users  # what negatives avoid
        if (torch.bincount(avoided, minlength=U) >= I).any():
            where = "in training" if self.all_keys is None else "(data.negatives_exclude=all)"
            raise ConfigError(f"a user rated all {I} movies {where}: no training negatives can be sampled")
        test_rows, val_rows = torch.from_numpy(sp.test_rows), torch.from_numpy(sp.val_rows)
        self.split_stats = sp.stats
        # a user needs num_test_negatives movies they never rated; heavy raters short of that
        # are left out of evaluation (counted and logged) rather than given repeated candidates
        unseen = I - torch.bincount(users, minlength=U)[users[test_rows]]
        enough = unseen >= self.num_test_negatives
        if not enough.all():
            if not enough.any():
                raise ConfigError(
                    f"data.num_test_negatives={self.num_test_negatives} is more than the movies any "
                    f"evaluated user has not rated (at most {int(unseen.max())} of {I}); lower it")
            log.warning("%d users rated too many of the %d movies to leave %d unseen candidates; "
                        "they are trained on but not evaluated", int((~enough).sum()), I,
                        self.num_test_negatives)
            test_rows, val_rows = test_rows[enough], val_rows[enough]
        self.split_stats["users_excluded_too_few_unseen"] = int((~enough).sum())
        self.eval_users = users[test_rows]
        test_positives, val_positives = items[test_rows], items[val_rows]
        # the per-rating tensors are done with: freed before the candidates
        # (the peak of preparing 100M ratings went from 10.8 to 9.2 GB)
        del users, items, order, in_train, avoided, train, sp
        gen = torch.Generator().manual_seed(derive_seed(self.seed, 2))
        if self.split == "ncf":  # the authors' candidates, from their .test.negative file
            self.test_items = self._ncf_candidates(self.eval_users, test_positives, seen_keys)
            self.split_stats["ncf_candidates_replaced"] = self.ncf_candidates_replaced
        else:
            self.test_items = sample_candidates(self.eval_users, test_positives, seen_keys, I,
                                                self.num_test_negatives, gen)
        self.val_items = sample_candidates(self.eval_users, val_positives, seen_keys, I,
                                           self.num_test_negatives, gen)
        self.item_counts = torch.bincount(self.train_items, minlength=I)
        n = len(self.eval_users)
        if self.full_ranking_users is not None and self.full_ranking_users < n:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed(self.seed, 5)))
            self.full_rank_mask = torch.zeros(n, dtype=torch.bool)
            self.full_rank_mask[order[:self.full_ranking_users]] = True
        self.prepare_seconds = time.perf_counter() - t0
        log.info("data %s: %d ratings, %d users, %d items; %d training positives, %d users evaluated "
                 "(1 + %d candidates each); prepared in %.1f s", self.name, len(table), U, I,
                 len(self.train_users), len(self.eval_users), self.num_test_negatives,
                 self.prepare_seconds)

    def train_dataloader(self) -> TrainBatches:
        rank, world = self._rank_world()
        device = self.trainer.strategy.root_device if self.batches_on_device and self.trainer else None
        return TrainBatches(self.train_users, self.train_items, self.batch_size, self.seed,
                            self._epoch, rank, world, device=device, weights=self.train_weights)

    def val_dataloader(self) -> EvalBatches:
        return EvalBatches(self.eval_users, self.val_items, self.eval_batch_size, *self._rank_world())

    def test_dataloader(self) -> EvalBatches:
        # test batches carry each user's training items, for full-ranking evaluation
        return EvalBatches(self.eval_users, self.test_items, self.eval_batch_size, *self._rank_world(),
                           seen_keys=self.train_keys.cpu(), num_items=self.num_items,
                           full_mask=self.full_rank_mask)

    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        """Training batches {"users": (B,), "items": (B,)} of positives become {"users": (B,),
        "items": (B, 1 + num_negatives)}: each positive in column 0, followed by negatives of
        its user sampled on the device the batch lives on. Evaluation batches pass through."""
        if self.trainer is None or not self.trainer.training:
            return batch
        users, items = batch["users"], batch["items"]
        # the sampling index over the training pairs is built once per device (O(R)), then each
        # step costs three binary searches, with no host round trip (see UnratedItems)
        keys = self._negative_keys(users.device)
        if self._unrated is None or self._unrated[0] is not keys:
            self._unrated = (keys, UnratedItems(keys, self.num_items))
        negs = self._unrated[1].sample(users, self.num_negatives, self._negative_generator(users.device))
        out = {"users": users, "items": torch.cat([items[:, None], negs.view(len(users), -1)], dim=1)}
        if "weights" in batch:  # data.recency_half_life: one weight per positive and its negatives
            out["weights"] = batch["weights"]
        return out

    # -- facts for the rest of the run ------------------------------------------------------

    @property
    def num_users(self) -> int:
        return self.table.num_users

    @property
    def num_items(self) -> int:
        return self.table.num_items

    def data_stats(self) -> dict[str, int]:
        """Counts after parsing and subsetting (DESIGN.md `data_stats`)."""
        return {"ratings": len(self.table), "users": self.num_users, "items": self.num_items,
                "eval_users": len(self.eval_users), "train_positives": len(self.train_users),
                **{k: v for k, v in self.split_stats.items() if isinstance(v, int)}}

    def item_labels(self) -> list[str]:
        """A display label per dense item: "Title (year)" where titles are known, else the id."""
        t = self.table
        if t.item_titles is None:
            return [f"movie {i}" for i in t.item_ids.tolist()]
        years = ["" if y != y else f" ({int(y)})" for y in t.item_years.tolist()]  # y != y: NaN
        return [f"{title if title is not None else f'movie {i}'}{year}"
                for title, year, i in zip(t.item_titles.tolist(), years, t.item_ids.tolist())]

    def popularity_scores(self, stage: str = "test") -> Tensor:
        """Training popularity of each candidate, (U, 1+n): the most-popular-first baseline."""
        cands = self.test_items if stage == "test" else self.val_items
        return self.item_counts[cands].float()

    def true_scores(self, users: Tensor, items: Tensor) -> Tensor | None:
        """The generator's true preference of (users, items) (dense indices, any shapes that
        broadcast), float32 on the CPU, for synthetic data; None for real data. Ranking by it is
        the oracle: the ceiling for any model on this data.

        Synthetic means `data.generate` (data=synthetic) or a folder holding a complete data set
        from `python -m flixrec.data.synthetic` read with another data config (data=netflix)."""
        from flixrec.data.synthetic import true_scores

        if not self._generated:
            return None
        t = self.table
        return torch.from_numpy(true_scores(Path(self.root), t.user_ids[users.cpu().numpy()],
                                            t.item_ids[items.cpu().numpy()]))

    def full_ranking_rows(self) -> Tensor:
        """Positions in `eval_users` of the users the test's full ranking ranks: all of them, or
        the seeded sample of `full_ranking_users`; int64, ascending."""
        if self.full_rank_mask is None:
            return torch.arange(len(self.eval_users))
        return self.full_rank_mask.nonzero().view(-1)

    def train_seen(self, users: Tensor, items: Tensor) -> Tensor:
        """Bool, shaped like `items`: did the user rate the item in training?"""
        return is_member(self._device_keys(items.device), users, items, self.num_items)

    # -- internals --------------------------------------------------------------------------

    def _split(self, table: Ratings) -> Split:
        """The `data.split` of `table`; every split breaks same-time ties by one seeded rule."""
        U, I, seed = table.num_users, table.num_items, derive_seed(self.seed, 0)
        if self.split == "temporal":
            return temporal(table.users, table.items, table.times, U, I, seed,
                            self.temporal_fraction, self.min_ratings, table.time_unit)
        if self.split == "probe":
            from flixrec.data.netflix import read_probe

            path = Path(self.root) / "probe.txt"
            if not path.is_file():
                raise DataError(path, "not found: data.split=probe needs the Netflix probe file "
                                      "probe.txt in data.root")
            pairs = read_probe(path, self.on_bad_lines)
            users, items = map_probe(pairs["customer_id"].to_numpy(), pairs["movie_id"].to_numpy(),
                                     table.user_ids, table.item_ids)
            return probe(table.users, table.items, table.times, U, I, seed, users, items,
                         self.min_ratings)
        if self.split == "ncf":
            from flixrec.data.ncf import read_ncf_test

            users, items = read_ncf_test(self.root, self._ncf_prefix())
            users, items = map_probe(users, items, table.user_ids, table.item_ids)
            # as with the probe set: the file's rating is the test positive, the user's latest
            # other rating the validation positive, and neither is trained on
            return probe(table.users, table.items, table.times, U, I, seed, users, items,
                         self.min_ratings)
        return leave_one_out(table.users, table.items, table.times, U, I, seed, self.min_ratings)

    def _ncf_prefix(self) -> str:
        prefix = getattr(self.reader, "prefix", None)
        if prefix is None:
            raise ConfigError(f"data.split=ncf reads the NCF authors' held-out files, but data "
                              f"{self.name!r} is not in their format; use data=ncf-ml-1m")
        return prefix

    def _ncf_candidates(self, eval_users: Tensor, positives: Tensor, seen_keys: Tensor) -> Tensor:
        """(users, 1 + n) test candidates from `<prefix>.test.negative`: each evaluated user's
        test item, then the n movies the authors ranked it against. Every evaluated user must
        have a line whose (user,item) is their test rating, and its candidates must be distinct
        movies of the rating files that the user did not rate (other than their test movie,
        below); otherwise the first bad line of the file is named.

        The authors' ml-1m file lists the user's own test movie among its candidates on 156 of
        its 6,040 lines (their evaluation code then ranks it against the other 98). Here such a
        candidate is replaced by a seeded draw of another movie the user never rated, so every
        user keeps n distinct unseen candidates; the count is logged and kept in data_stats
        (`ncf_candidates_replaced`)."""
        from flixrec.data.ncf import read_ncf_negatives

        path = Path(self.root) / f"{self._ncf_prefix()}.test.negative"
        file_users, file_items, candidates, file_lines = read_ncf_negatives(path)
        n = candidates.shape[1]
        if n != self.num_test_negatives:
            raise ConfigError(f"data.num_test_negatives={self.num_test_negatives}, but {path} ranks "
                              f"each test item against {n} movies; set data.num_test_negatives={n}")
        t = self.table
        users = dense_index(file_users, t.user_ids)
        known = np.flatnonzero(users >= 0)  # lines of users in the table
        repeat = _first_duplicate(users[known])
        if repeat is not None:
            first = known[repeat]
            raise DataError(path, f"user {file_users[first]} has a second line", line=int(file_lines[first]))
        line_of_user = torch.full((t.num_users,), -1, dtype=torch.long)
        line_of_user[torch.from_numpy(users[known])] = torch.from_numpy(known)
        rows = line_of_user[eval_users]
        if (rows < 0).any():
            missing = t.user_ids[eval_users[rows < 0][0]]
            raise DataError(path, f"has no line for user {missing}, who has a test rating")
        items = torch.from_numpy(dense_index(candidates, t.item_ids))[rows]
        first_item = torch.from_numpy(dense_index(file_items, t.item_ids))[rows]
        own = items == positives[:, None]  # the user's own test movie listed as a candidate
        problems = [
            (first_item != positives, "its (user,item) is not the user's test rating"),
            ((items < 0).any(1), "a candidate is not a movie of the rating files"),
            ((is_member(seen_keys, eval_users[:, None], items.clamp(min=0), t.num_items) & ~own).any(1),
             "a candidate is a movie the user rated"),
            ((torch.sort(items, 1).values.diff(1) == 0).any(1), "a candidate is listed twice"),
        ]
        bad = torch.stack([b for b, _ in problems]).any(0)
        if bad.any():  # the first bad line of the file, with its first problem
            first = int(torch.argmin(torch.where(bad, rows, len(file_users))))
            problem = next(text for b, text in problems if b[first])
            raise DataError(path, problem, line=int(file_lines[int(rows[first])]))
        hit = own.any(1)
        self.ncf_candidates_replaced = int(hit.sum())
        if hit.any():
            # n distinct draws of movies the user never rated: at least one of them is not
            # among the row's other n - 1 candidates
            gen = torch.Generator().manual_seed(derive_seed(self.seed, 4))
            draws = sample_candidates(eval_users[hit], positives[hit], seen_keys, t.num_items, n, gen)[:, 1:]
            fresh = ~(draws[:, :, None] == items[hit][:, None, :]).any(-1)
            # each hit row lists its own movie once (duplicates were refused), so `own` picks
            # one cell per hit row, in row order
            items[own] = draws.gather(1, fresh.float().argmax(1, keepdim=True))[:, 0]
            log.warning("%s lists the user's own test movie among the candidates on %d of the %d "
                        "lines used; each was replaced by another movie the user never rated",
                        path, int(hit.sum()), len(rows))
        return torch.cat([positives[:, None], items], dim=1)

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def _epoch(self) -> int:
        return self.trainer.current_epoch if self.trainer is not None else 0

    def _on_device(self, name: str, device: torch.device) -> Tensor:
        """Attribute `name` (a tensor), moved to `device` once and kept there."""
        tensor = getattr(self, name)
        if tensor.device != device:
            tensor = tensor.to(device)
            setattr(self, name, tensor)
        return tensor

    def _device_keys(self, device: torch.device) -> Tensor:
        return self._on_device("train_keys", device)

    def _negative_keys(self, device: torch.device) -> Tensor:
        """The sorted pair keys training negatives avoid (`negatives_exclude`), on `device`."""
        return self._on_device("train_keys" if self.all_keys is None else "all_keys", device)

    def _negative_generator(self, device: torch.device) -> torch.Generator:
        # one stream per (epoch, rank), reseeded when the epoch changes, so a resumed run
        # draws the same negatives as an uninterrupted one
        state = (self._epoch(), self._rank_world()[0], str(device))
        if self._neg_state is None or self._neg_state[0] != state:
            gen = torch.Generator(device=device).manual_seed(derive_seed(self.seed, 3, *state[:2]))
            self._neg_state = (state, gen)
        return self._neg_state[1]
