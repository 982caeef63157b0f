"""The leaderboard: per (teacher, student) pair, its KD variants ranked by mean top-1, each beside the two
baselines a reader asks about first — the same KD without mixing, and the student trained from scratch — with
the paired, multiple-comparison-adjusted verdict of each difference (from comparisons.csv)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..columns import natural

METRIC = "top1_last"
COLUMNS = ["teacher", "student", "rank", "setting", "n", "top1", "top1_ci_low", "top1_ci_high",
           "delta_vs_kd", "delta_vs_kd_p_adjusted", "delta_vs_kd_verdict",
           "delta_vs_scratch", "delta_vs_scratch_p_adjusted", "delta_vs_scratch_verdict",
           "teacher_top1", "scratch_top1", "ece", "variant", "variant_id"]


def _scalar(summary: pd.DataFrame, metric: str) -> pd.DataFrame:
    rows = summary[summary["metric"] == metric]
    qualifiers = [c for c in ("metric_temperature", "attack", "epsilon", "bin", "class", "x")
                  if c in rows.columns]
    return rows[rows[qualifiers].isna().all(axis=1)]


def _against(comparisons: pd.DataFrame, axis: str, prefix: str) -> pd.DataFrame:
    """The top-1 comparison of each KD variant (as b) along `axis`, as `prefix`-named columns."""
    rows = comparisons[(comparisons["axis"] == axis) & (comparisons["metric"] == METRIC)]
    by_variant = rows.drop_duplicates("b_variant_id").set_index("b_variant_id")
    return by_variant[["mean_diff", "p_adjusted", "verdict"]].rename(
        columns={"mean_diff": prefix, "p_adjusted": f"{prefix}_p_adjusted", "verdict": f"{prefix}_verdict"})


def leaderboard_table(summary: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    top1 = _scalar(summary, METRIC)
    kd = top1[top1["role"] == "student"]
    if kd.empty:
        return pd.DataFrame(columns=COLUMNS)
    board = kd[["teacher", "student", "variant", "variant_id", "n", "mean", "ci_low", "ci_high", "mix"]] \
        .rename(columns={"mean": "top1", "ci_low": "top1_ci_low", "ci_high": "top1_ci_high"}) \
        .set_index("variant_id", drop=False)
    board = board.join(_against(comparisons, "mix", "delta_vs_kd")).join(
        _against(comparisons, "distillation", "delta_vs_scratch"))
    board.loc[board["mix"] == "none", "delta_vs_kd_verdict"] = "reference"
    board["setting"] = [_setting(v, t, s)
                        for v, t, s in zip(board["variant"], board["teacher"], board["student"])]
    teachers = top1[top1["role"] == "teacher"].groupby("name")["mean"].first()
    scratch = top1[(top1["role"] == "scratch") & (top1["mix"] == "none")].groupby("name")["mean"].first()
    board["teacher_top1"] = board["teacher"].map(teachers)
    board["scratch_top1"] = board["student"].map(scratch)
    board["ece"] = board["variant_id"].map(_scalar(summary, "ece").set_index("variant_id")["mean"])
    board = board.sort_values(["teacher", "student", "top1", "variant"], ascending=[True, True, False, True],
                              key=lambda c: c.map(natural) if c.name in ("teacher", "student") else c)
    board["rank"] = board.groupby(["teacher", "student"])["top1"] \
        .rank(method="min", ascending=False).astype(int)
    return board.reindex(columns=COLUMNS).reset_index(drop=True)


def _setting(variant: str, teacher: str, student: str) -> str:
    """The variant's label without its pair, which the leaderboard names in its own columns."""
    pair = f"{teacher}→{student}"
    return (variant[len(pair) + 3:] if variant.startswith(f"{pair} · ")
            else ("KD" if variant == pair else variant))


def _pct(value: float) -> str:
    return "—" if pd.isna(value) else f"{100 * value:.2f}"


def _delta(value: float, verdict) -> str:
    if pd.isna(value):
        return "—" if verdict != "reference" else "(reference)"
    return f"{100 * value:+.2f} ({verdict})"


def head(board: pd.DataFrame, per_pair: int = 3, pairs: int = 10) -> str:
    """The first variants of each pair as terminal lines (top-1 in %, Δ in points)."""
    if board.empty:
        return "leaderboard: no complete distilled student yet"
    lines = []
    groups = list(board.groupby(["teacher", "student"], sort=False))
    for (teacher, student), rows in groups[:pairs]:
        lines.append(f"{teacher} → {student}  (teacher {_pct(rows['teacher_top1'].iloc[0])}, "
                     f"from scratch {_pct(rows['scratch_top1'].iloc[0])})")
        width = min(60, max(len(v) for v in rows["setting"].head(per_pair)))
        for r in rows.head(per_pair).itertuples():
            ci = f"[{_pct(r.top1_ci_low)}, {_pct(r.top1_ci_high)}]" if np.isfinite(r.top1_ci_low) else ""
            lines.append(f"  {r.rank:>3}. {r.setting[:60]:<{width}}  {_pct(r.top1)} {ci:<16} n={r.n}  "
                         f"vs no mixing (same loss) {_delta(r.delta_vs_kd, r.delta_vs_kd_verdict)}; "
                         f"vs scratch {_delta(r.delta_vs_scratch, r.delta_vs_scratch_verdict)}")
    if len(groups) > pairs:
        lines.append(f"... and {len(groups) - pairs} more pairs")
    return "\n".join(lines)
