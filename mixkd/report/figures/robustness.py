"""Adversarial robustness: do mixing and distillation change how much accuracy survives an attack? A table per
group (a study's teachers, a student's runs from scratch, each pair's distilled students) of top-1 on clean
images and under FGSM and PGD-10 at each ε, one row per variant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...columns import describe, natural
from ...tables import Tables
from . import figure
from .data import VALUES, by_pair, kd_order, panels_of, scratch_order, summary_rows
from .layout import finish, new_page, paginate, set_titles, tick_labels

ATTACKS = {"fgsm": "FGSM", "pgd10": "PGD-10"}
MAX_ROWS = 32
LABEL_WIDTH = 4.0  # inches a row label may take before it wraps


def _rows(tables: Tables, role: str) -> pd.DataFrame:
    """The role's attacked top-1 rows, one column per attack and ε; ε = 0 (the same images, unattacked) once,
    as 'clean'."""
    rows = summary_rows(tables, "robust_top1", (role,), scalar=False)
    if rows.empty:
        return rows
    clean = rows["epsilon"] == 0
    rows = rows[~clean | (rows["attack"] == rows.loc[clean, "attack"].min())]
    label = [f"{ATTACKS.get(a, a)} ε={255 * e:g}/255" if e else "clean"
             for a, e in zip(rows["attack"], rows["epsilon"])]
    return rows.assign(column=label)


def _data(tables: Tables) -> pd.DataFrame:
    teachers, scratch, kd = (_rows(tables, r) for r in ("teacher", "scratch", "student"))
    if teachers.empty and scratch.empty and kd.empty:
        return pd.DataFrame(columns=["page", "panel", "series", "column", *VALUES])
    parts = []
    if len(teachers):
        parts.append(teachers.assign(panel="teachers", series=teachers["name"]).iloc[
            sorted(range(len(teachers)), key=lambda i: natural(teachers["name"].iat[i]))])
    if len(scratch):
        scratch = scratch_order(scratch)
        parts.append(scratch.assign(panel=scratch["name"] + " from scratch", series=scratch["mix_label"]))
    if len(kd):
        kd = by_pair(kd_order(kd))
        kd, within = panels_of(kd, ["pair"], ["mix", "mixed_view", "loss"], MAX_ROWS)
        series = describe(kd, (*within, "temperature"), always=("mix",))
        parts.append(kd.assign(panel="KD " + kd["panel"], series=series))
    rows = pd.concat(parts, ignore_index=True)
    return paginate(rows[["panel", "series", "column", *VALUES]], _size(rows), 3, [])


def _size(rows: pd.DataFrame) -> tuple[float, float]:
    per_panel = rows.groupby("panel")["series"].nunique().max()
    _, label, row = tick_labels(rows["series"].unique(), LABEL_WIDTH)
    return 1.3 + label + 0.42 * rows["column"].nunique(), 1.7 + max(0.2, row) * per_panel


@figure("robustness", _data)
def robustness(data: pd.DataFrame) -> list:
    """Does mixing make students harder to fool? Top-1 (%) on the first 500 evaluation images, clean and
    under L∞ FGSM and PGD-10 attacks (pixel space) at each ε, mean over seeds: one row per variant, one table
    per group, one colour scale for every page."""
    columns = list(dict.fromkeys(data.sort_values(["attack", "epsilon"], na_position="first")["column"]))
    vmin, vmax = 100 * data["mean"].min(), 100 * data["mean"].max()
    size = _size(data)
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        fig, axes = new_page(len(panels), size, 3, [],
                             "Top-1 (%) on clean images and under attack (mean over seeds)")
        for ax, panel in zip(axes, panels):
            mine = rows[rows["panel"] == panel]
            series = list(dict.fromkeys(mine["series"]))
            grid = 100 * mine.pivot_table("mean", "series", "column").reindex(index=series, columns=columns)
            image = ax.imshow(grid.to_numpy(float), cmap="cividis", vmin=vmin, vmax=vmax, aspect="auto")
            for (r, c), m in np.ndenumerate(grid.to_numpy(float)):
                if np.isfinite(m):
                    ax.text(c, r, f"{m:.1f}", ha="center", va="center", fontsize=6,
                            color="black" if m > (vmin + vmax) / 2 else "white")
            ax.set_xticks(range(len(columns)), columns, rotation=90)
            ax.set_yticks(range(len(series)), tick_labels(series, LABEL_WIDTH)[0])
            ax.spines[:].set_visible(False)
        fig.colorbar(image, ax=axes, shrink=0.5, label="top-1 (%)")
        set_titles(fig, axes, panels)
        pages.append(finish(fig))
    return pages
