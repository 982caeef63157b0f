"""What every figure shares: the style, one colour per mixing variant, and pages of panels that stay legible
whatever the study's size — a page is at most MAX_SIDE inches a side, so large studies get more pages,
never smaller text, and every legend sits below the panels, never on them."""

from __future__ import annotations

import functools
import math
import re

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

DPI = 150
MAX_SIDE = 24.0  # inches: 3,600 px at DPI
HEADER = 0.5  # inches above the panels: the page title
LEGEND_LINE = 0.24  # inches per line of a legend below the panels
FONT = 8
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442"]
STYLE = {"font.size": FONT, "axes.titlesize": FONT, "axes.labelsize": FONT, "xtick.labelsize": FONT - 1,
         "ytick.labelsize": FONT - 1, "legend.fontsize": FONT - 1, "figure.titlesize": FONT + 2,
         "axes.spines.top": False, "axes.spines.right": False,
         "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO)}
VIEW_LINES = {"none": "-", "student": "-", "teacher": ":", "both": "--"}
HUES = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def mix_colours(labels) -> dict[str, str]:
    """Mixing variant → colour, the same in every figure of a study: black for none, then Okabe–Ito's
    colour-blind safe palette in name order (tab20 past seven variants)."""
    mixes = sorted(set(labels) - {"none"})
    palette = OKABE_ITO if len(mixes) <= len(OKABE_ITO) else [matplotlib.colors.to_hex(c) for c in
                                                               plt.get_cmap("tab20").colors]
    return {"none": "#000000", **{m: palette[i % len(palette)] for i, m in enumerate(mixes)}}


def text_width(text: str, size: float = FONT) -> float:
    """The width in inches of `text`'s longest line in the style's font, as matplotlib lays it out."""
    lines = str(text).split("\n")
    return max(_line_width(line, size) for line in lines) if lines else 0.0


@functools.lru_cache(maxsize=65536)
def _line_width(line: str, size: float) -> float:
    if not line.strip():
        return 0.0
    width, _, _ = _MEASURE.get_text_width_height_descent(line, FontProperties(size=size), ismath=False)
    return width / DPI


# measures text as the PNG pages lay it out (same font, metrics and hinting)
_MEASURE = RendererAgg(1, 1, DPI)


def wrap(text: str, width_in: float, size: float = FONT) -> str:
    """`text` broken into lines that fit `width_in` inches: at spaces, and inside a word too long for a line
    after its commas and opening parentheses (`kd(ce_weight=0.1,` / `kd_weight=0.9)`)."""
    lines: list[str] = []
    for word in str(text).split(" "):
        parts = [word] if text_width(word, size) <= width_in else re.split(r"(?<=[,(])", word)
        for k, part in enumerate(parts):
            glue = " " if k == 0 else ""
            if lines and text_width(f"{lines[-1]}{glue}{part}", size) <= width_in:
                lines[-1] = f"{lines[-1]}{glue}{part}"
            else:
                lines.append(part)
    return "\n".join(lines)


LINE = 1.25 / 72  # inches of one line of text per point of font size


def tick_labels(labels, max_width: float, size: float = FONT - 1) -> tuple[list[str], float, float]:
    """Axis labels wrapped to at most `max_width` inches, with the width and the height (inches) they take:
    what a row of a panel needs so its label never runs into the next one."""
    wrapped = [wrap(label, max_width, size) for label in labels]
    width = max((text_width(w, size) for w in wrapped), default=0.0)
    lines = max((w.count("\n") + 1 for w in wrapped), default=1)
    return wrapped, width, lines * size * LINE + 0.04


def set_titles(fig: Figure, axes: list, titles: list[str], size: float = FONT) -> None:
    """Panel titles wrapped to their panel's laid-out width (known only once the layout has run), so
    neighbouring titles never run into each other, whatever the labels and colour bars took."""
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=size)
    fig.draw_without_rendering()
    for ax, title in zip(axes, titles):
        width = 0.95 * ax.get_position().width * fig.get_figwidth()  # a margin: neighbours' titles come close
        ax.set_title("\n".join(wrap(line, width, size) for line in title.split("\n")), fontsize=size)


def legend_shape(labels: list[str], width_in: float) -> tuple[int, int]:
    """(columns, lines) of a legend of `labels` laid out across `width_in` inches."""
    if not labels:
        return 1, 0
    entry = 0.55 + max(text_width(label, FONT - 1) for label in labels)
    ncol = max(1, min(len(labels), int(width_in // entry)))
    return ncol, math.ceil(len(labels) / ncol)


def grid_shape(n: int, panel: tuple[float, float], max_cols: int, legend: list[str]) -> tuple[int, int]:
    """(columns, rows) of panels on a full page of a figure with `n` panels of `panel` inches."""
    w, h = panel
    ncols = max(1, min(max_cols, n, int(MAX_SIDE // w)))
    _, lines = legend_shape(legend, ncols * w)
    free = MAX_SIDE - HEADER - lines * LEGEND_LINE
    return ncols, max(1, min(math.ceil(n / ncols), int(free // h)))


def paginate(frame: pd.DataFrame, panel: tuple[float, float], max_cols: int,
             legend: list[str]) -> pd.DataFrame:
    """`frame` with a `page` column: its panels (the `panel` column, in order of appearance) in pages of as
    many as fit."""
    panels = list(dict.fromkeys(frame["panel"]))
    ncols, nrows = grid_shape(len(panels), panel, max_cols, legend)
    page = {p: i // (ncols * nrows) + 1 for i, p in enumerate(panels)}
    return frame.assign(page=frame["panel"].map(page).astype(int))


def new_page(n: int, panel: tuple[float, float], max_cols: int, legend: list[str], title: str,
             **subplot_kw) -> tuple[Figure, list]:
    """A page of `n` panels laid out as `paginate` counted them, room left below for the legend."""
    w, h = panel
    ncols = max(1, min(max_cols, n, int(MAX_SIDE // w)))
    nrows = math.ceil(n / ncols)
    _, lines = legend_shape(legend, ncols * w)
    fig = plt.figure(figsize=(ncols * w, nrows * h + HEADER + lines * LEGEND_LINE), dpi=DPI,
                     layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw).ravel()
    for ax in axes[n:]:
        ax.remove()
    fig.suptitle(wrap(title, ncols * w, FONT + 2))
    return fig, list(axes[:n])


def legend_below(fig: Figure, handles: list, labels: list[str]) -> None:
    """One legend for the whole page, below its panels (constrained layout keeps it off them)."""
    if not handles:
        return
    ncol, _ = legend_shape(labels, fig.get_figwidth())
    fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False, handlelength=3)


def accuracy_range(values) -> tuple[float, float]:
    """Axis limits (in %) around every value drawn, CIs and baselines included, within [0, 100]."""
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not len(v):
        return 0.0, 100.0
    pad = max(1.0, 0.05 * (v.max() - v.min()))
    return max(0.0, v.min() - pad), min(100.0, v.max() + pad)


def finish(fig: Figure) -> Figure:
    """Hand a finished page back without keeping it open in pyplot: many pages in one process don't pile up,
    and a notebook shows it once (as the cell's value), not twice."""
    plt.close(fig)
    return fig
