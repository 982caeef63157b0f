"""Penultimate features in 2-D: does mixing tighten or blur the classes a model (and its student) separates?
Single runs, not means: a map of one seed's features (t-SNE cannot be averaged), titled with that run's
within- over between-class scatter ratio."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D

from ...columns import labelled, natural
from ...tables import Tables
from . import figure
from .layout import OKABE_ITO, finish, legend_below, new_page, paginate, set_titles

PANEL = (2.5, 2.8)
COLUMNS = ["page", "panel", "run_id", "variant_id", "variant", "seed", "class", "x", "y", "scatter_ratio"]
VIEW_RANK = {"both": 0, "student": 1, "teacher": 2, "none": 3}


def mapped_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs to map, one per group: each teacher; each student from scratch per mix; per pair and mix the
    distilled student at the highest temperature, preferring the view 'both', then Hinton's `kd` (the loss
    every study compares against), else the first loss by name; each at its lowest mapped seed."""
    runs = labelled(runs)
    kd = runs[runs["role"] == "student"]
    picks = pd.concat([runs[runs["role"] != "student"], kd[kd["temperature"] == kd["temperature"].max()]])
    picks = picks.assign(role_rank=picks["role"].map(["teacher", "scratch", "student"].index),
                         view_rank=picks["mixed_view"].map(VIEW_RANK).fillna(3), mixed=picks["mix"] != "none",
                         not_kd=picks["loss"] != "kd",
                         name_key=picks["name"].map(natural), teacher_key=picks["teacher"].map(natural))
    picks = picks.sort_values(["role_rank", "name_key", "teacher_key", "mixed", "mix_label", "view_rank",
                               "not_kd", "loss_label", "seed"], kind="stable")
    return picks.drop_duplicates(["role", "name", "teacher", "mix_label"])


def _data(tables: Tables) -> pd.DataFrame:
    maps = tables.metrics[tables.metrics["metric"] == "tsne"] if len(tables.metrics) else tables.metrics
    if maps.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = tables.runs[tables.runs["run_id"].isin(maps["run_id"]) & (tables.runs["status"] == "complete")]
    picks = mapped_runs(runs)
    ratio = tables.metrics[tables.metrics["metric"] == "scatter_ratio"].set_index("run_id")["value"]
    picks = picks.assign(panel=[f"{v} (seed {s})" for v, s in zip(picks["variant"], picks["seed"])],
                         scatter_ratio=picks["run_id"].map(ratio))
    points = picks[["run_id", "variant_id", "variant", "seed", "panel", "scatter_ratio"]].merge(
        maps[["run_id", "class", "x", "y"]], on="run_id", sort=False)
    classes = points["class"].nunique()
    return paginate(points[COLUMNS[1:]], PANEL, 4, [""] * min(classes, 20) if classes <= 20 else [])


@figure("tsne", _data)
def tsne(data: pd.DataFrame) -> list:
    """How do mixing and distillation shape the features? A 2-D t-SNE of ≤ 200 evaluation images' penultimate
    features, coloured by true class, for each teacher, the student from scratch per mix, and per pair and mix
    the distilled student at the highest temperature; S_w/S_b, within- over between-class scatter, lower is
    tighter."""
    classes = sorted(data["class"].unique())
    cmap = plt.get_cmap("viridis", len(classes)) if len(classes) > 7 else None
    colour = {c: cmap(i) if cmap else OKABE_ITO[i] for i, c in enumerate(classes)}
    legend = [f"{c:g}" for c in classes] if len(classes) <= 20 else []
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        fig, axes = new_page(len(panels), PANEL, 4, legend,
                             "t-SNE of penultimate features, coloured by true class "
                             "(S_w/S_b: within / between-class scatter, lower = tighter)")
        for ax, panel in zip(axes, panels):
            points = rows[rows["panel"] == panel]
            ax.scatter(points["x"], points["y"], c=[colour[c] for c in points["class"]], s=4, lw=0)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal", adjustable="datalim")
        ratios = rows.drop_duplicates("panel").set_index("panel")["scatter_ratio"]
        set_titles(fig, axes, [f"{p}\nS_w/S_b = {ratios[p]:.2f}" for p in panels], size=7)
        handles = ([Line2D([], [], ls="", marker="o", ms=4, color=colour[c]) for c in classes]
                   if legend else [])
        legend_below(fig, handles, legend)
        pages.append(finish(fig))
    return pages
