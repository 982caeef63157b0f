"""Statistics across seeds, from the tables alone: per-variant mean and 95% CI, and paired comparisons along
every axis that varies, corrected for multiple comparisons.

Runs of a study that share a seed share the data order, the mixing draws and a student's initialisation
(common random numbers, see `mixkd.train`), so two variants are compared paired by seed: a paired t-test on
the per-seed differences, far less noisy than comparing two means. With many comparisons some raw p-values
fall under 0.05 by chance alone, so `significant` reads the Benjamini–Hochberg adjusted p-value of each
metric's comparisons across the study (README: why BH), and is never claimed with fewer than 3 seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from .. import columns
from ..columns import VIEW_ORDER, labelled, of_kind
from ..rundir import atomic_write
from ..config import Recipe
from ..tables import parquet_bytes

CONFIDENCE, ALPHA, MIN_SEEDS = 0.95, 0.05, 3
RUN_METRICS = ("top1_last", "top1_best")  # from the runs table; the rest come from the analysis rows
MAPS = ("tsne",)  # one run's per-image coordinates: drawn, never averaged
OBSERVATION_KEYS = ("metric", "metric_temperature", "attack", "epsilon", "bin", "class", "x")
# What is compared between variants: top-1 and the main analyses (calibration, fit, smoothness, fidelity).
COMPARED = ("top1_last", "ece", "nll", "entropy", "agreement")
# The range a metric's mean lies in, so its CI does too (the t-interval alone can pass 100% with few seeds).
UNIT = (0.0, 1.0)
BOUNDS = {**dict.fromkeys(("top1_last", "top1_best", "top1", "top5", "robust_top1", "agreement", "ece",
                           "max_prob", "reliability_accuracy", "reliability_confidence",
                           "entropy_hist"), UNIT),
          **dict.fromkeys(("logit_corr", "logit_corr_sample"), (-1.0, 1.0)), "brier": (0.0, 2.0)}
NONNEGATIVE = ("nll", "entropy", "entropy_mean", "entropy_median", "class_entropy", "logit_norm", "logit_std",
               "kl_teacher_student", "scatter_ratio", "reliability_count")
# What a summary row names of its variant besides every config column that varies within the study.
DESCRIPTIVE = ("variant", "role", "name", "teacher", "student", "mix", "mixed_view", "temperature", "loss")


# ---- per-variant summary -----------------------------------------------------------------------------------

def observations(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One number per complete run and measured quantity: the runs table's top-1 (last, best) and every
    analysis row but per-image maps. Bins and classes are observations too (reliability diagrams,
    histograms)."""
    done = runs[runs["status"] == "complete"]
    from_runs = done.melt("run_id", list(RUN_METRICS), "metric", "value")
    rows = metrics[metrics["run_id"].isin(done["run_id"]) & ~metrics["metric"].isin(MAPS)]
    rows = rows.rename(columns={"temperature": "metric_temperature"})
    table = pd.concat([from_runs, rows], ignore_index=True).reindex(
        columns=["run_id", *OBSERVATION_KEYS, "value"])
    return table.astype({"value": float}).merge(done[["run_id", "variant_id", "seed"]], on="run_id")


def bounds(metric: str) -> tuple[float, float]:
    return BOUNDS.get(metric, (0.0, np.inf) if metric in NONNEGATIVE else (-np.inf, np.inf))


def t_interval(mean, sd, n, metric) -> tuple[np.ndarray, np.ndarray]:
    """The two-sided t-interval of a mean over n seeds (NaN below two), cut to the range the metric lies in:
    the true mean lies there, so the cut interval covers it whenever the whole one does."""
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = np.where(n > 1, stats.t.ppf((1 + CONFIDENCE) / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n),
                        np.nan)
    lo, hi = np.array([bounds(m) for m in metric]).T if len(metric) else (np.array([]), np.array([]))
    return np.clip(mean - half, lo, hi), np.clip(mean + half, lo, hi)


def summary_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per variant and measured quantity: n seeds, mean, sd and 95% CI, with the variant's readable
    columns."""
    keys = ["variant_id", *OBSERVATION_KEYS]
    obs = observations(runs, metrics).sort_values(["run_id", *OBSERVATION_KEYS],
                                                  kind="stable")  # fixed sum order
    table = obs.groupby(keys, dropna=False, sort=True)["value"] \
        .agg(n="count", mean="mean", std="std").reset_index()
    table["ci_low"], table["ci_high"] = t_interval(table["mean"].to_numpy(), table["std"].to_numpy(),
                                                   table["n"].to_numpy(), table["metric"].to_numpy())
    described = variant_columns(runs)
    table = described.merge(table, on="variant_id", how="inner")
    return table.sort_values(["role_rank", "variant", *OBSERVATION_KEYS], kind="stable") \
        .drop(columns="role_rank").reset_index(drop=True).astype({"n": int})


def variant_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: id, label, the descriptive axes and every other config column varying in the
    study."""
    config = [c for c in of_kind(runs, "config") if c not in DESCRIPTIVE]
    shown = ["variant_id", *DESCRIPTIVE, *columns.varying(runs, config)]
    table = runs.drop_duplicates("variant_id")[shown]
    return table.assign(role_rank=table["role"].map(columns.ROLES.index))


# ---- paired comparisons ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Axis:
    """One axis of paired comparisons. `columns` are the config columns its levels differ in (all others are
    held fixed); `level` names each row's level; with `reference`, each other level is compared with the
    reference levels only (mix against none), else every pair of levels in `order`. mean_diff is b − a."""

    roles: tuple[str, ...]
    columns: Callable[[pd.DataFrame], list[str]]
    level: Callable[[pd.DataFrame], pd.Series]
    order: Callable[[str], object] = str
    reference: Callable[[pd.DataFrame], pd.Series] | None = None
    prepare: Callable[[pd.DataFrame], pd.DataFrame] = staticmethod(lambda frame: frame)


def _prefixed(prefix: str) -> Callable[[pd.DataFrame], list[str]]:
    return lambda frame: [c for c in frame.columns if c == prefix or c.startswith(f"{prefix}_")]


def _none_at_every_view(frame: pd.DataFrame) -> pd.DataFrame:
    """KD without mixing is one run whatever the view (stored as view 'none'): for the mix axis it is the
    reference of every view the study's mixed students use."""
    kd = frame["role"] == "student"
    views = sorted(set(frame.loc[kd & (frame["mix"] != "none"), "mixed_view"]) - {"none"},
                   key=VIEW_ORDER.index)
    plain = kd & (frame["mix"] == "none")
    if not views or not plain.any():
        return frame
    return pd.concat([frame[~plain], *(frame[plain].assign(mixed_view=v) for v in views)], ignore_index=True)


def _mixed_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["mix"] != "none"]


TEACHER_COLUMNS = ("teacher", "teacher_id", "teacher_mix")
# what a student's name stands for: its model, arguments and recipe
STUDENT_COLUMNS = ("student", "name", "model", "model_args", *(f.name for f in fields(Recipe)))


def _teacher_base(runs: pd.DataFrame) -> pd.Series:
    """Per teacher run id, its config but the name and the mix: teachers alike in all else share it, so a
    Mix-T teacher is compared with its plain counterpart only."""
    teachers = runs[runs["role"] == "teacher"]
    kept = [c for c in of_kind(runs, "config")
            if c not in ("name", "variant") and c != "mix" and not c.startswith("mix_")]
    return pd.Series(teachers[kept].map(str).agg("|".join, axis=1).to_numpy(), index=teachers["run_id"])


def _against_scratch(frame: pd.DataFrame) -> pd.DataFrame:
    """Each KD run beside its student's run from scratch without mixing (same seed), the scratch run taking
    the KD run's context: 'does distillation help this student, here?'."""
    kd, scratch = (frame[frame["role"] == "student"],
                   frame[(frame["role"] == "scratch") & (frame["mix"] == "none")])
    partner = kd.drop(columns=["run_id", "variant_id", "role"]).merge(
        scratch[["name", "seed", "run_id", "variant_id", "role"]], on=["name", "seed"])
    return pd.concat([kd, partner[kd.columns]], ignore_index=True) if len(partner) else kd.iloc[:0]


AXES: dict[str, Axis] = {
    "mix": Axis(("scratch", "student"), _prefixed("mix"), lambda f: f["mix_label"],
                reference=lambda f: f["mix"] == "none", prepare=_none_at_every_view),
    "temperature": Axis(("student",), lambda f: ["temperature"], lambda f: f["temperature"].map(columns.fmt),
                        order=float),
    "mixed_view": Axis(("student",), lambda f: ["mixed_view"], lambda f: f["mixed_view"],
                       order=VIEW_ORDER.index, prepare=_mixed_only),
    "loss": Axis(("student",), _prefixed("loss"), lambda f: f["loss_label"]),
    "teacher_mix": Axis(("student",), lambda f: list(TEACHER_COLUMNS), lambda f: f["teacher"],
                        reference=lambda f: f["teacher_mix"] == "none"),
    "student": Axis(("scratch", "student"),
                    lambda f: [c for c in f.columns if c in STUDENT_COLUMNS or c.startswith("schedule")],
                    lambda f: f["name"]),
    "distillation": Axis(("scratch", "student"), lambda f: ["role"],
                         lambda f: f["role"].map({"scratch": "from scratch", "student": "distilled"}),
                         reference=lambda f: f["role"] == "scratch", prepare=_against_scratch),
}
CONTEXT = ("role", "teacher", "teacher_model", "student", "mix", "mixed_view", "temperature", "loss")
COMPARISON_COLUMNS = ["axis", "metric", *CONTEXT, "a", "b", "n", "mean_a", "mean_b", "mean_diff", "ci_low",
                      "ci_high", "effect_size", "t_stat", "t_pvalue", "wilcoxon_pvalue", "p_adjusted",
                      "significant", "verdict", "a_variant_id", "b_variant_id"]


def comparisons_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Paired (by seed) comparisons of complete runs along every axis of AXES that varies, for each COMPARED
    metric, with BH-adjusted p-values per metric across the study."""
    obs = observations(runs, metrics)
    obs = obs[obs["metric"].isin(COMPARED) & obs[list(OBSERVATION_KEYS[1:])].isna().all(axis=1)]
    config = [*of_kind(runs, "config"), "teacher_base"]
    frame = labelled(runs[runs["status"] == "complete"])
    frame = frame.assign(teacher_base=frame["teacher_id"].map(_teacher_base(runs)))
    parts = [_along(name, axis, frame, obs[["run_id", "metric", "value"]], config)
             for name, axis in AXES.items()]
    table = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
    if table is None:
        return pd.DataFrame(columns=COMPARISON_COLUMNS)
    return _adjusted(table)[COMPARISON_COLUMNS]


# the context column an axis's comparisons leave blank: the one they vary
BLANK = {"mix": "mix", "temperature": "temperature", "mixed_view": "mixed_view", "loss": "loss",
         "teacher_mix": "teacher", "student": "student"}


def _along(name: str, axis: Axis, frame: pd.DataFrame, obs: pd.DataFrame, config: list[str]) -> pd.DataFrame:
    """The comparisons along one axis: runs grouped by everything else (`config` minus the axis's columns),
    paired by seed within each group."""
    rows = axis.prepare(frame[frame["role"].isin(axis.roles)])
    if rows.empty:
        return pd.DataFrame()
    changing = set(axis.columns(rows))
    context = [c for c in config if c not in changing]
    rows = rows.assign(level=axis.level(rows).astype(str),
                       is_reference=axis.reference(rows) if axis.reference else False,
                       context=rows.groupby(context, dropna=False, sort=True).ngroup())
    long = rows[["run_id", "variant_id", "seed", "context", "level", "is_reference"]].merge(obs, on="run_id")
    on = ["context", "seed", "metric"]
    pairs = long.merge(long, on=on, suffixes=("_a", "_b"))
    rank = {lv: i for i, lv in enumerate(sorted(rows["level"].unique(), key=axis.order))}
    if axis.reference:
        keep = pairs["is_reference_a"] & ~pairs["is_reference_b"]
    else:
        keep = pairs["level_a"].map(rank) < pairs["level_b"].map(rank)
    pairs = pairs[keep].sort_values(["context", "level_a", "level_b", "metric", "seed"], kind="stable")
    if pairs.empty:
        return pd.DataFrame()
    pairs["d"] = np.round(pairs["value_b"] - pairs["value_a"], 12)  # float noise in equal scores is a tie
    result = _paired_tests(pairs)
    described = rows.drop_duplicates("context").set_index("context")
    out = described.loc[result["context"], ["role", "teacher", "teacher_model", "student", "mix_label",
                                            "mixed_view", "temperature", "loss_label"]].reset_index(drop=True)
    out.columns = list(CONTEXT)
    if name in BLANK:
        out[BLANK[name]] = np.nan
    return pd.concat([out, result.drop(columns="context").reset_index(drop=True)], axis=1).assign(axis=name)


def _paired_tests(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (context, a, b, metric): mean of the differences b − a with its t-interval, Cohen's d_z, paired
    t-test and Wilcoxon signed-rank test. Undefined statistics are NaN: fewer than two pairs; t when the
    differences have no variance (t divides by zero); Wilcoxon when every difference is zero."""
    keys = ["context", "level_a", "level_b", "metric"]
    g = pairs.groupby(keys, sort=False)
    table = g.agg(n=("d", "count"), mean_a=("value_a", "mean"), mean_b=("value_b", "mean"),
                  mean_diff=("d", "mean"), sd=("d", "std"), a_variant_id=("variant_id_a", "first"),
                  b_variant_id=("variant_id_b", "first"))
    table = table.reset_index().rename(columns={"level_a": "a", "level_b": "b"})
    n, mean, sd = (table[c].to_numpy(float) for c in ("n", "mean_diff", "sd"))
    testable = (n > 1) & (sd > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.where(testable, sd / np.sqrt(n), np.nan)
        t = mean / se
        half = stats.t.ppf((1 + CONFIDENCE) / 2, np.maximum(n - 1, 1)) * se
        table["effect_size"] = np.where(testable, mean / sd, np.nan)
    table["ci_low"], table["ci_high"] = mean - half, mean + half
    table["t_stat"] = t
    table["t_pvalue"] = np.where(testable, 2 * stats.t.sf(np.abs(t), np.maximum(n - 1, 1)), np.nan)
    differences = [d.to_numpy() for _, d in g["d"]]
    table["all_zero"] = [bool((d == 0).all()) for d in differences]
    table["wilcoxon_pvalue"] = _wilcoxon(differences)
    return table.drop(columns="sd")


def _wilcoxon(differences: list[np.ndarray]) -> np.ndarray:
    """Wilcoxon signed-rank p-value of each set of differences (NaN below two, or when all are zero), computed
    for all sets of one size at once: scipy's test is vectorised along an axis, one call per set is slow."""
    p = np.full(len(differences), np.nan)
    by_size: dict[int, list[int]] = {}
    for i, d in enumerate(differences):
        if len(d) > 1 and np.any(d != 0):
            by_size.setdefault(len(d), []).append(i)
    for indices in by_size.values():
        p[indices] = stats.wilcoxon(np.stack([differences[i] for i in indices]), axis=1).pvalue
    return p


def _adjusted(table: pd.DataFrame) -> pd.DataFrame:
    """BH-adjusted p-values within each metric's family (the tests with ≥ MIN_SEEDS pairs and a defined p: the
    only ones that can make a claim), `significant` from them, and a one-word `verdict`."""
    table = table.copy()
    table["p_adjusted"] = np.nan
    claimable = (table["n"] >= MIN_SEEDS) & table["t_pvalue"].notna()
    for _, family in table[claimable].groupby("metric"):
        table.loc[family.index, "p_adjusted"] = stats.false_discovery_control(family["t_pvalue"], method="bh")
    table["significant"] = table["p_adjusted"] < ALPHA
    table["verdict"] = np.select(
        [table["n"] < MIN_SEEDS, table["all_zero"], table["t_pvalue"].isna(), table["significant"]],
        ["too few seeds", "no difference", "no variance", "significant"], "not significant")
    return table.drop(columns="all_zero")


def write_statistics(runs: pd.DataFrame, metrics: pd.DataFrame,
                     out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv (and summary.parquet, the same table: a large study's CSV takes seconds to parse) and
    comparisons.csv in the study's output folder, atomically; same tables → same bytes."""
    summary, comparisons = summary_table(runs, metrics), comparisons_table(runs, metrics)
    atomic_write(Path(out) / "summary.csv", summary.to_csv(index=False))
    atomic_write(Path(out) / "summary.parquet", parquet_bytes(summary))
    atomic_write(Path(out) / "comparisons.csv", comparisons.to_csv(index=False))
    return summary, comparisons
