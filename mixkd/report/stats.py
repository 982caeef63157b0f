"""Statistics across seeds, from the tables alone: per-configuration mean ± 95% CI, and paired comparisons.

Runs that differ only in one axis but share a seed also share the data order and the mixing draws (see
`mixkd.train`), so the comparisons are paired by seed: a paired t-test and a Wilcoxon signed-rank test on the
per-seed differences, which are far less noisy than comparing two means.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..rundir import atomic_write
from ..study import Recipe

# A configuration's identity: every config column of the runs table except the seed. Results (status, metrics,
# timings, provenance) and run ids are not identity. Components (dataset, mix, loss, schedule) add one column
# per parameter (mix_alpha, ...), and the recipe one per field.
IDENTITY = ("study", "role", "name", "model", "teacher", "student", "teacher_id", "teacher_model", "teacher_mix",
            "temperature", "mixed_view", "model_args")
COMPONENTS = ("dataset", "mix", "loss", "schedule")
RECIPE = tuple(f.name for f in dataclasses.fields(Recipe) if f.name != "schedule")
RUN_METRICS = ("top1_last", "top1_best")  # from the runs table; the rest come from the analysis rows
OBSERVATION_KEYS = ("metric", "metric_temperature", "attack", "epsilon")  # what a summarised number measures
CONFIDENCE = 0.95
ALPHA = 0.05


def identity_columns(runs: pd.DataFrame) -> list[str]:
    def is_identity(c: str) -> bool:
        return c in IDENTITY or c in RECIPE or any(c == p or c.startswith(f"{p}_") for p in COMPONENTS)

    return [c for c in runs.columns if is_identity(c)]


def component_label(runs: pd.DataFrame, prefix: str) -> pd.Series:
    """A readable name per run for a component: its name, plus the parameters that tell apart variants of the
    same name within these runs, e.g. 'mixup' when there is one mixup, 'mixup(alpha=0.2)' when there are two."""
    params = [c for c in runs.columns if c.startswith(f"{prefix}_")]

    def label(name, group: pd.DataFrame) -> pd.Series:
        varying = [c for c in params if group[c].astype(str).nunique() > 1]
        if not varying:
            return pd.Series(str(name), index=group.index)
        return group[varying].apply(
            lambda r: f"{name}(" + ",".join(f"{c[len(prefix) + 1:]}={_fmt(r[c])}" for c in varying) + ")", axis=1)

    if runs.empty:
        return pd.Series(dtype=object)
    return pd.concat([label(name, group) for name, group in runs.groupby(prefix, dropna=False)]).reindex(runs.index)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) else str(value)


def observations(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One number per complete run and measured quantity: the runs table's top-1 (last, best) and every scalar
    analysis row (those without bin, class or coordinates: not histograms, per-class values or maps)."""
    done = runs.loc[runs["status"] == "complete", "run_id"]
    from_runs = runs[runs["run_id"].isin(done)].melt("run_id", list(RUN_METRICS), "metric", "value")
    scalar = metrics[metrics["run_id"].isin(done)]
    for q in ("bin", "class", "x", "y"):
        if q in scalar.columns:
            scalar = scalar[scalar[q].isna()]
    scalar = scalar.rename(columns={"temperature": "metric_temperature"})
    table = pd.concat([from_runs, scalar], ignore_index=True)
    return table.reindex(columns=["run_id", *OBSERVATION_KEYS, "value"])


def mean_ci(values: pd.Series) -> pd.Series:
    """n, mean, sd and the two-sided t-interval of the mean (NaN with fewer than two values)."""
    v = values.dropna().to_numpy(float)
    n, mean = len(v), v.mean() if len(v) else np.nan
    sd = v.std(ddof=1) if n > 1 else np.nan
    half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * sd / np.sqrt(n) if n > 1 else np.nan
    return pd.Series({"n": n, "mean": mean, "std": sd, "ci_low": mean - half, "ci_high": mean + half})


def summary_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Per configuration (identity columns) and measured quantity: n, mean, std and 95% CI over seeds."""
    ident = identity_columns(runs)
    # sorted by run: each group's values are then summed in the same order however the tables were ordered
    obs = observations(runs, metrics).merge(runs[["run_id", *ident]], on="run_id").sort_values("run_id", kind="stable")
    keys = [*ident, *OBSERVATION_KEYS]
    if obs.empty:
        return pd.DataFrame(columns=[*keys, "n", "mean", "std", "ci_low", "ci_high"])
    table = obs.groupby(keys, dropna=False, sort=True)["value"].apply(mean_ci).unstack().reset_index()
    return table.astype({"n": int})


def paired_test(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of the paired differences b − a with its 95% t-interval, paired t-test and Wilcoxon signed-rank test.

    Differences are rounded to 1e-12 first, so float noise in equal scores counts as a tie. Undefined statistics
    are NaN and not significant: fewer than two pairs; the t-interval and t-test when the differences have no
    variance (t divides by zero: scipy reports p = 0 for two seeds that happen to differ by the same count);
    Wilcoxon when every difference is zero."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = np.round(b - a, 12)
    n = len(d)
    result = {"n": n, "mean_diff": d.mean() if n else np.nan, "ci_low": np.nan, "ci_high": np.nan,
              "t_stat": np.nan, "t_pvalue": np.nan, "wilcoxon_pvalue": np.nan, "significant": False}
    if n < 2:
        return result
    if d.std() > 0:
        half = stats.t.ppf((1 + CONFIDENCE) / 2, n - 1) * d.std(ddof=1) / np.sqrt(n)
        t = stats.ttest_rel(b, a)
        result.update(ci_low=d.mean() - half, ci_high=d.mean() + half, t_stat=float(t.statistic),
                      t_pvalue=float(t.pvalue), significant=bool(t.pvalue < ALPHA))
    if np.any(d != 0):
        try:
            result["wilcoxon_pvalue"] = float(stats.wilcoxon(d).pvalue)
        except ValueError:  # scipy refuses some degenerate inputs; the statistic is then undefined
            pass
    return result


VIEW_ORDER = ("none", "student", "teacher", "both")


def _none_at_every_view(frame: pd.DataFrame) -> pd.DataFrame:
    """A KD run without mixing is the same run whatever the mixed view (it is stored with view 'none'), so for the
    mix axis it is the baseline of every view: copy it to each view the study's mixed students use."""
    views = sorted(set(frame.loc[(frame["role"] == "student") & (frame["mix"] != "none"), "mixed_view"]) - {"none"},
                   key=VIEW_ORDER.index)
    plain = (frame["role"] == "student") & (frame["mix"] == "none")
    if not views or not plain.any():
        return frame
    copies = [frame[plain].assign(mixed_view=v) for v in views]
    return pd.concat([frame[~plain], *copies], ignore_index=True)


@dataclasses.dataclass(frozen=True)
class Axis:
    """One axis of paired comparisons: how its levels are ordered, which pairs are compared, and how the runs
    are prepared first. mean_diff is always b − a."""

    order: callable
    against_first: bool = False  # compare every level with the first only (e.g. each mix against none)
    prepare: callable = staticmethod(lambda frame: frame)


AXES = {
    "mix": Axis(order=lambda levels: sorted(levels, key=lambda m: (m != "none", m)), against_first=True,
                prepare=_none_at_every_view),
    "temperature": Axis(order=sorted),
    "mixed_view": Axis(order=lambda levels: sorted(levels, key=VIEW_ORDER.index)),
}
CONTEXT = ("role", "teacher", "student", "mix", "temperature", "mixed_view", "loss")  # written to comparisons.csv
COMPARISON_COLUMNS = [*CONTEXT, "metric", "axis", "a", "b", "n", "mean_diff", "ci_low", "ci_high", "t_stat",
                      "t_pvalue", "wilcoxon_pvalue", "significant"]


def labelled(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs with mix and loss as readable variant labels (see `component_label`)."""
    return runs.assign(mix=component_label(runs, "mix"), loss=component_label(runs, "loss"))


def comparisons_table(runs: pd.DataFrame, metrics: tuple[str, ...] = RUN_METRICS) -> pd.DataFrame:
    """Paired (by seed) comparisons of complete KD and from-scratch runs along each axis of AXES, all else equal."""
    frame = labelled(runs)
    frame = frame[(frame["status"] == "complete") & frame["role"].isin(["scratch", "student"])]
    key = [c for c in identity_columns(runs) if not c.startswith(("mix_", "loss_"))]
    rows = []
    for axis_name, axis in AXES.items():
        data = axis.prepare(frame)
        context = [c for c in key if c != axis_name]
        for _, group in data.groupby(context, dropna=False, sort=True) if len(data) else []:
            levels = axis.order(group[axis_name].dropna().unique().tolist())
            pairs = ([(levels[0], b) for b in levels[1:]] if axis.against_first else
                     [(a, b) for i, a in enumerate(levels) for b in levels[i + 1:]])
            for a, b in pairs:
                for metric in metrics:
                    paired = pd.merge(group.loc[group[axis_name] == a, ["seed", metric]],
                                      group.loc[group[axis_name] == b, ["seed", metric]], on="seed").dropna()
                    paired = paired.sort_values("seed")  # the same order, whatever the tables' row order
                    if paired.empty:
                        continue
                    fixed = {c: (np.nan if c == axis_name else group[c].iloc[0]) for c in CONTEXT}
                    rows.append({**fixed, "metric": metric, "axis": axis_name, "a": _fmt(a), "b": _fmt(b),
                                 **paired_test(paired[f"{metric}_x"].to_numpy(), paired[f"{metric}_y"].to_numpy())})
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def write_statistics(runs: pd.DataFrame, metrics: pd.DataFrame, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """summary.csv and comparisons.csv in the study's output folder, atomically; same tables → same bytes."""
    summary, comparisons = summary_table(runs, metrics), comparisons_table(runs)
    atomic_write(Path(out) / "summary.csv", summary.to_csv(index=False))
    atomic_write(Path(out) / "comparisons.csv", comparisons.to_csv(index=False))
    return summary, comparisons
