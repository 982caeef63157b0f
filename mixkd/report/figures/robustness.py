"""Adversarial robustness: do mixing and distillation change how much accuracy survives an attack? A table per
group (a study's teachers, a student's runs from scratch, each pair's distilled students) of top-1 on clean
images and under FGSM and PGD-10 at each ε, one row per variant."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ...columns import describe
from ...tables import Tables
from . import figure
from .data import VALUES, by_pair, kd_order, natural, panels_of, summary_rows
from .layout import finish, new_page, paginate, set_titles, tick_labels

ATTACKS = {"fgsm": "FGSM", "pgd10": "PGD-10"}
MAX_ROWS = 32
LABEL_WIDTH = 4.0  # inches a row label may take before it wraps


def _rows(tables: Tables, role: str) -> pd.DataFrame:
    attacked = summary_rows(tables, "robust_top1", (role,), scalar=False)
    if attacked.empty:
        return attacked
    clean = summary_rows(tables, "top1_last", (role,))
    clean = clean[clean["variant_id"].isin(attacked["variant_id"])]
    return pd.concat([clean.assign(column="clean"), attacked.assign(
        column=attacked["attack"].map(lambda a: ATTACKS.get(a, a)) + " ε=" +
        (255 * attacked["epsilon"]).map(lambda e: f"{e:g}") + "/255")], ignore_index=True)


def _data(tables: Tables) -> pd.DataFrame:
    teachers, scratch, kd = (_rows(tables, r) for r in ("teacher", "scratch", "student"))
    if teachers.empty and scratch.empty and kd.empty:
        return pd.DataFrame(columns=["page", "panel", "series", "column", *VALUES])
    parts = []
    if len(teachers):
        parts.append(teachers.assign(panel="teachers", series=teachers["name"]).iloc[
            sorted(range(len(teachers)), key=lambda i: natural(teachers["name"].iat[i]))])
    if len(scratch):
        scratch = scratch.iloc[sorted(range(len(scratch)), key=lambda i: natural(scratch["name"].iat[i]))]
        parts.append(scratch.assign(panel=scratch["name"] + " from scratch", series=scratch["mix_label"]))
    if len(kd):
        kd = by_pair(kd_order(kd))
        panel, within = panels_of(kd, ["pair"], ["mix", "mixed_view", "loss"], MAX_ROWS)
        parts.append(kd.assign(panel="KD " + panel, series=describe(kd, (*within, "temperature"), always=("mix",))))
    rows = pd.concat(parts, ignore_index=True)
    return paginate(rows[["panel", "series", "column", *VALUES]], _size(rows), 3, [])


def _size(rows: pd.DataFrame) -> tuple[float, float]:
    per_panel = rows.groupby("panel")["series"].nunique().max()
    _, label, row = tick_labels(rows["series"].unique(), LABEL_WIDTH)
    return 1.3 + label + 0.42 * rows["column"].nunique(), 1.7 + max(0.2, row) * per_panel


@figure("robustness", _data)
def robustness(data: pd.DataFrame) -> list:
    """Does mixing make students harder to fool? Top-1 (%) on clean evaluation images and under L∞ FGSM and
    PGD-10 attacks (pixel space, first 500 images) at each ε, mean over seeds: one row per variant, one table per
    group, one colour scale for every page."""
    columns = list(dict.fromkeys(data.sort_values(["attack", "epsilon"], na_position="first")["column"]))
    vmin, vmax = 100 * data["mean"].min(), 100 * data["mean"].max()
    size = _size(data)
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        fig, axes = new_page(len(panels), size, 3, [], "Top-1 (%) on clean images and under attack (mean over "
                                                       "seeds)")
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
