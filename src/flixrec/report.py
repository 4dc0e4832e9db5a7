"""Compare finished runs: a table of every run and per-model means, and bar charts with spread."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from flixrec.errors import ConfigError

log = logging.getLogger(__name__)

METRICS = ("hr@10", "ndcg@10")


def collect_runs(root: Path) -> pd.DataFrame:
    """One row per training run's metrics.json below `root` (evaluate.py and compare outputs are
    skipped): run, model, data, seed, hyperparameters, test metrics (and full-ranking ones)."""
    rows = []
    for path in sorted(Path(root).rglob("metrics.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("skipping unreadable %s (%s)", path, exc)
            continue
        if m.get("kind", "train") != "train" or "test" not in m:
            continue
        row = {"run": str(path.parent.relative_to(root)) or ".", "model": m["model"],
               "data": m["data"], "seed": m["seed"], "best_epoch": m.get("best_epoch")}
        row.update({k: v for k, v in m.get("hparams", {}).items()})
        row.update({f"test/{k}": v for k, v in m["test"].items()})
        row.update({f"test_full/{k}": v for k, v in m.get("test_full", {}).items()})
        row.update({f"pop/{k}": v for k, v in m.get("baseline_pop", {}).get("test", {}).items()
                    if k in METRICS})
        for block in ("test", "test_full"):  # the ceiling, on synthetic data
            row.update({f"oracle_{block}/{k}": v for k, v in m.get("oracle", {}).get(block, {}).items()
                        if k in METRICS})
        row["train_seconds"] = m.get("train_seconds")
        rows.append(row)
    if not rows:
        raise ConfigError(f"compare={root}: no training run's metrics.json with test results below it")
    return pd.DataFrame(rows)


# what a run's figures measure (run.protocol_hparams): a difference here makes another test, so it
# labels the data, not the model, and such runs are never averaged together (nor their oracles)
PROTOCOL = ("split", "subset", "num_test_negatives", "min_ratings")
NOT_SETTINGS = {"run", "model", "data", "seed", "best_epoch", "train_seconds", *PROTOCOL}
# settings added to the logged hparams later, with the value older runs (which lack them) had
DEFAULT_SETTINGS = {"loss": "bce", "l2": 0.0, "negatives_exclude": "train", "full_ranking_users": "all"}


def _as_text(values: pd.DataFrame) -> pd.DataFrame:
    """Settings as strings for grouping and labels: "unset" where a run did not record one,
    whole numbers as such (a column with a missing value turns 4 into 4.0)."""
    return values.astype(object).where(values.notna(), "unset").apply(lambda col: col.map(
        lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)))


def protocol_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, its data name, followed by the protocol settings (`PROTOCOL`) that tell it
    apart from other runs on the same data, e.g. "tiny (split=temporal(0.8))"."""
    present = [c for c in PROTOCOL if c in runs.columns]
    labels = runs["data"].astype(str)
    for _, group in runs.groupby("data", sort=False):
        values = _as_text(group[present])
        varying = [c for c in present if values[c].nunique() > 1]
        if varying:
            labels.loc[group.index] = group["data"].astype(str) + " (" + values[varying].apply(
                lambda col: col.name + "=" + col).agg(", ".join, axis=1) + ")"
    return labels


def setting_labels(runs: pd.DataFrame) -> pd.Series:
    """Per run, its model name, followed by the settings that tell it apart from other runs of
    the same model and data, e.g. "neumf (lr=0.01)" when a sweep varied the learning rate; the
    bare model name when its runs differ by seed only. A setting with one value per seed and
    one seed per value (the per-seed checkpoint paths of neumf_pretrained) follows the seed and
    does not split a model."""
    settings = [c for c in runs.columns if c not in NOT_SETTINGS and "/" not in c]
    labels = runs["model"].astype(str)
    for _, group in runs.groupby(["data", "model"], sort=False):
        # a setting an older run did not record takes the value it had then, if known, or "unset"
        values = _as_text(group[settings].astype(object).fillna(
            {c: DEFAULT_SETTINGS[c] for c in settings if c in DEFAULT_SETTINGS}))
        seeds = group["seed"].astype(str)
        n_seeds = seeds.nunique()

        def follows_seed(col: str) -> bool:  # one value per seed and one seed per value
            return values[col].nunique() == n_seeds == (seeds + "\0" + values[col]).nunique()

        varying = [c for c in settings if values[c].nunique() > 1 and not follows_seed(c)]
        if varying:
            labels.loc[group.index] = group["model"].astype(str) + " (" + values[varying].apply(
                lambda col: col.name + "=" + col).agg(", ".join, axis=1) + ")"
    return labels


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and count of the test metrics per (data, model setting); on
    synthetic data also a row `oracle` (ranking by the generator's true scores, once per seed).
    Runs of one model that differ in a setting besides the seed (a sweep over `model.loss` or
    the learning rate) get a row each, labelled with that setting (`setting_labels`); runs on
    the same data under another protocol (`PROTOCOL`, e.g. data.split) are another data set
    (`protocol_labels`), with an oracle row of its own."""
    cols = [c for c in runs.columns if c.startswith(("test/", "test_full/")) and
            c.split("/")[1] in METRICS]
    runs = runs.assign(data=protocol_labels(runs))
    runs = runs.assign(model=setting_labels(runs))
    oracle = [c for c in runs.columns if c.startswith("oracle_")]
    if oracle:
        # the oracle of synthetic data, as one more row per data set: ranking by the true scores
        # one row per (data, seed), each oracle figure from any run that has it (full ranking
        # may be off in some runs)
        ceiling = runs.dropna(subset=oracle, how="all").groupby(["data", "seed"])[oracle].first()
        ceiling = ceiling.reset_index().assign(model="oracle")
        runs = pd.concat([runs, ceiling.rename(columns=lambda c: c.removeprefix("oracle_"))],
                         ignore_index=True)
    grouped = runs.groupby(["data", "model"], sort=True)[cols]
    out = grouped.mean().round(4).add_suffix(" mean").join(grouped.std(ddof=1).round(4).add_suffix(" std"))
    out["runs"] = grouped.size()
    ordered = [f"{c} {s}" for c in cols for s in ("mean", "std")] + ["runs"]
    return out[ordered].reset_index()


def plot_metric(summary: pd.DataFrame, metric: str, path: Path) -> None:
    """Horizontal bar chart of `test/<metric>` per model (one bar per row of `summary`, top to
    bottom), error bars one standard deviation, each bar labelled with its mean, s.d. and run
    count. Long labels (a model with the settings that tell its runs apart) wrap onto lines."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m if summary["data"].nunique() == 1 else f"{m} ({d})"
              for d, m in zip(summary["data"], summary["model"])]
    labels = [textwrap.fill(label, 42, break_long_words=False) for label in labels]
    means = summary[f"test/{metric} mean"].to_numpy()
    stds = summary[f"test/{metric} std"].fillna(0.0).to_numpy()
    lines = sum(label.count("\n") + 1 for label in labels)
    fig, ax = plt.subplots(figsize=(9.0, max(2.5, 0.22 * lines + 0.15 * len(labels) + 1.3)))
    colors = ["#999999" if m == "oracle" else "#4C72B0" for m in summary["model"]]
    rows = range(len(labels))
    ax.barh(rows, means, xerr=stds, capsize=4, color=colors, edgecolor="black")
    for row, mean, std, n in zip(rows, means, stds, summary["runs"]):
        ax.annotate(f"{mean:.3f} ± {std:.3f} (n={n})", (mean + std, row), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(list(rows), labels, fontsize=8)
    ax.invert_yaxis()  # first row on top, as in comparison.md
    data_names = ", ".join(sorted(summary["data"].unique()))
    ax.set_title(f"Test {metric.upper()} per model\n({data_names}; mean ± s.d. over seeds)")
    ax.set_xlabel(f"test {metric}")
    top = np.nanmax(means + stds) if np.isfinite(means + stds).any() else 0.0  # a metric may be missing
    ax.set_xlim(0, max(0.05, float(top) * 1.3))  # room for the bar labels
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(root: str | Path, out_dir: str | Path) -> pd.DataFrame:
    """Write comparison.csv, comparison.md, hr@10.png, ndcg@10.png into `out_dir`; return the
    per-model summary."""
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise ConfigError(f"compare={root}: no such directory")
    runs = collect_runs(root)
    runs["data"] = protocol_labels(runs)
    summary = summarise(runs)
    runs.to_csv(out_dir / "comparison.csv", index=False)
    md = ["# Run comparison", "", f"Runs below `{root}`: {len(runs)}.", "",
          "## Per model (test metrics, mean and standard deviation over runs)", "",
          summary.to_markdown(index=False), "", "## Every run", "", runs.to_markdown(index=False), ""]
    (out_dir / "comparison.md").write_text("\n".join(md))
    for metric in METRICS:
        plot_metric(summary, metric, out_dir / f"{metric}.png")
    print(summary.to_string(index=False), flush=True)
    return summary
