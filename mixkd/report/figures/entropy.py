"""MIX-KD's smoothness question: are teachers trained with mixing less confident (higher output entropy), and
is that what changes them as teachers? Each teacher model's plain and Mix-T teachers side by side."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ...columns import natural
from ...tables import Tables
from . import figure
from .data import VALUES, summary_rows, teacher_series
from .layout import finish, legend_below, mix_colours, new_page, paginate, set_titles

PARTS = ("entropy histogram at T=1", "mean entropy at T", "mean entropy at T=1 per true class")
METRICS = {"entropy_hist": PARTS[0], "entropy_mean": PARTS[1], "class_entropy": PARTS[2]}
PANEL = (3.6, 2.6)
DASHES = ["-", "--", ":", "-."]


def _data(tables: Tables) -> pd.DataFrame:
    parts = [summary_rows(tables, m, ("teacher",), scalar=False).assign(part=part)
             for m, part in METRICS.items()]
    rows = pd.concat([p for p in parts if len(p)], ignore_index=True) if any(len(p) for p in parts) else None
    if rows is None:
        return pd.DataFrame(columns=["page", "panel", "series", *VALUES])
    model = tables.variants.set_index("variant_id")["model"]
    rows["model"] = rows["variant_id"].map(model)
    colours = mix_colours(tables.variants["mix_label"])
    rows["color"] = rows["mix_label"].map(colours)
    # teachers of one model told apart by line style too (plain first), in name order
    names = rows.drop_duplicates("name").sort_values("name", key=lambda c: c.map(natural))
    rows["linestyle"] = rows["name"].map({n: DASHES[i % 4] for _, g in names.groupby("model")
                                          for i, n in enumerate(g.sort_values("mix_label",
                                                                              key=lambda c: c != "none",
                                                                              kind="stable")["name"])})
    rows["series"] = teacher_series(rows, rows["model"])
    rows["panel"] = rows["model"] + ": " + rows["part"]
    order = sorted(range(len(rows)), key=lambda i: (natural(rows["model"].iat[i]),
                                                    PARTS.index(rows["part"].iat[i]),
                                                    natural(rows["name"].iat[i])))
    rows = rows.iloc[order]
    return paginate(rows[["panel", "series", "part", "color", "linestyle", *VALUES]], PANEL, 3,
                    list(dict.fromkeys(rows["series"])))


@figure("teacher_entropy", _data)
def teacher_entropy(data: pd.DataFrame) -> list:
    """Are mixup-trained ("Mix-T") teachers smoother? Each teacher's output entropy on the evaluation set: the
    histogram at T=1, the mean at T=1 and T=4, and the mean per true class, one row of panels per teacher
    model (plain and Mix-T teachers of that model together); means over the teacher's seeds."""
    style = data.drop_duplicates("series").set_index("series")[["color", "linestyle"]]
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        legend = list(dict.fromkeys(rows["series"]))
        fig, axes = new_page(len(panels), PANEL, 3, legend,
                             "Teacher output entropy, trained with and without mixing")
        for ax, panel in zip(axes, panels):
            mine = rows[rows["panel"] == panel]
            names = list(dict.fromkeys(mine["series"]))
            part = mine["part"].iloc[0]
            for k, name in enumerate(names):
                line, st = mine[mine["series"] == name], style.loc[name]
                if part == PARTS[0]:
                    line = line.sort_values("x")
                    ax.step(line["x"], line["mean"], where="mid", color=st["color"], ls=st["linestyle"],
                            lw=1.2)
                elif part == PARTS[1]:
                    line = line.sort_values("metric_temperature")
                    width = 0.8 / len(names)
                    x = np.arange(len(line)) + (k - (len(names) - 1) / 2) * width
                    ax.bar(x, line["mean"], width, color=st["color"], alpha=0.9, edgecolor="white",
                           hatch=["", "//", "..", "xx"][k % 4])
                    ax.set_xticks(range(len(line)), [f"T={t:g}" for t in line["metric_temperature"]])
                else:
                    line = line.sort_values("class")
                    ax.plot(line["class"], line["mean"], color=st["color"], ls=st["linestyle"], lw=1,
                            marker="o" if len(line) <= 20 else None, ms=3)
            if part == PARTS[0]:
                ax.set_yscale("log")
                ax.set(xlabel="entropy (nats)", ylabel="fraction of images")
            elif part == PARTS[1]:
                ax.set(ylabel="mean entropy (nats)")
            else:
                ax.set(xlabel="true class", ylabel="mean entropy (nats)")
        set_titles(fig, axes, panels)
        handles = [Line2D([], [], color=style.loc[s, "color"], ls=style.loc[s, "linestyle"]) for s in legend]
        legend_below(fig, handles, legend)
        pages.append(finish(fig))
    return pages
