"""Reliability diagrams: does mixing (and distilling from a mixed teacher) make a model's confidence match its
accuracy? One panel per group a reader compares within: a teacher model's teachers, a student's runs from
scratch, and the distilled students of each pair at each temperature and loss."""

from __future__ import annotations

import pandas as pd
from matplotlib.lines import Line2D

from ...columns import describe, natural, varies
from ...tables import Tables
from . import figure
from .data import (
    VALUES,
    by_pair,
    kd_order,
    panels_of,
    scratch_order,
    summary_rows,
    teacher_series,
)
from .layout import (
    VIEW_LINES,
    finish,
    legend_below,
    mix_colours,
    new_page,
    paginate,
    set_titles,
)

PANEL = (2.7, 2.9)
PARTS = {"reliability_confidence": "confidence", "reliability_accuracy": "accuracy"}


def _groups(tables: Tables, metric: str) -> pd.DataFrame:
    """The binned rows of `metric` of every run, with its panel and series (teachers by model, students from
    scratch by name, distilled students by pair × temperature × loss; lines are mixing variants)."""
    teachers = summary_rows(tables, metric, ("teacher",), scalar=False)
    model = teachers["variant_id"].map(tables.variants.set_index("variant_id")["model"])
    teachers = teachers.assign(panel="teachers " + model, mixed_view="none",
                               series=teacher_series(teachers, model))
    scratch = summary_rows(tables, metric, ("scratch",), scalar=False)
    scratch = scratch.assign(panel=scratch["name"] + " from scratch", series=scratch["mix_label"],
                             mixed_view="none")
    kd = summary_rows(tables, metric, ("student",), scalar=False)
    if len(kd):
        kd = by_pair(kd_order(kd))
        kd, within = panels_of(kd, ["pair", "temperature", "loss"], ["mix", "mixed_view"], 8,
                               always=("pair", "temperature"))
        kd = kd.assign(panel="KD " + kd["panel"], series=describe(kd, tuple(within), always=("mix",)))
        if "mixed_view" not in within or not varies(kd, "mixed_view"):
            kd["mixed_view"] = "none"  # not in the series' names: not in their line styles either
    groups = [teachers.iloc[sorted(range(len(teachers)), key=lambda i: natural(teachers["panel"].iat[i]))],
              scratch_order(scratch), kd]
    return pd.concat([g for g in groups if len(g)] or [teachers], ignore_index=True)


def _data(tables: Tables) -> pd.DataFrame:
    parts = [_groups(tables, m) for m in PARTS]
    if any(p.empty for p in parts):
        return pd.DataFrame(columns=["page", "panel", "series", *VALUES])
    rows = pd.concat(parts, ignore_index=True)
    colours = mix_colours(tables.variants["mix_label"])
    rows["color"] = rows["mix_label"].map(colours)
    rows["linestyle"] = rows["mixed_view"].map(VIEW_LINES).fillna("-")
    return paginate(rows[["panel", "series", "color", "linestyle", *VALUES]], PANEL, 4, list(_swatches(rows)))


def _swatches(rows: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """Legend label → (colour, line style), one entry per style: series drawn alike (a plain teacher and a
    scratch run without mixing: both black and solid) share an entry, their names joined."""
    styles: dict[tuple[str, str], list[str]] = {}
    for series, colour, style in rows[["series", "color", "linestyle"]].drop_duplicates("series").itertuples(
            index=False):
        styles.setdefault((colour, style), []).append(series)
    return {" / ".join(names): style for style, names in styles.items()}


@figure("reliability", _data)
def reliability(data: pd.DataFrame) -> list:
    """Reliability diagrams: accuracy against confidence in 15 equal-width confidence bins (each bin's mean
    confidence and accuracy averaged over seeds), the diagonal being perfect calibration; summary.csv has each
    variant's ECE."""
    style = data.drop_duplicates("series").set_index("series")[["color", "linestyle"]]
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        swatches = _swatches(rows)
        fig, axes = new_page(len(panels), PANEL, 4, list(swatches),
                             "Reliability diagrams (15 confidence bins, means over seeds)")
        points = rows.pivot_table("mean", ["panel", "series", "bin"], "metric", sort=False)
        for ax, panel in zip(axes, panels):
            for name, line in points.loc[panel].groupby("series", sort=False):
                line = line.droplevel("series").sort_index()  # by bin, whichever variant listed a bin first
                ax.plot(line["reliability_confidence"], line["reliability_accuracy"], marker="o", ms=2.5,
                        lw=1, color=style.loc[name, "color"], ls=style.loc[name, "linestyle"])
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=(0, (2, 2)))
            ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
            ax.set_aspect("equal")
        set_titles(fig, axes, panels)
        # no marker on the swatches: over a short dashed line it hides the gaps that tell the views apart
        handles = [Line2D([], [], color=colour, ls=ls) for colour, ls in swatches.values()]
        legend_below(fig, handles, list(swatches))
        pages.append(finish(fig))
    return pages
