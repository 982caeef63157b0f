"""Legibility checks of a rendered figure page: what a reader trips on, found from the drawn text's
extents."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.text import Text

from mixkd.report.figures.layout import DPI

MAX_PIXELS = 4000  # a side


def _boxes(fig: Figure, renderer) -> tuple[list[tuple[str, np.ndarray]], list[np.ndarray], list[np.ndarray]]:
    """(label, box) of every visible non-empty text outside legends; the legends' boxes; the axes' boxes."""
    legends = [a for a in fig.findobj(Legend) if a.get_visible()]
    skipped = {id(t) for lg in legends for t in lg.findobj(Text)}
    for axis in (a for ax in fig.axes for a in (ax.xaxis, ax.yaxis)):
        drawn = {id(x) for tick in axis._update_ticks()
                 for x in (tick.label1, tick.label2)}  # within the view
        skipped |= {id(x) for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                    for x in (tick.label1, tick.label2) if id(x) not in drawn}
    texts = []
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip() and id(t) not in skipped and t.get_alpha() != 0:
            box = t.get_window_extent(renderer)
            if box.width > 0 and box.height > 0:
                texts.append((t.get_text(), np.array(box.extents)))
    return (texts, [np.array(lg.get_window_extent(renderer).extents) for lg in legends],
            [np.array(ax.get_window_extent(renderer).extents) for ax in fig.axes if ax.get_visible()
             and ax.get_label() != "<colorbar>"])


def _overlap(a: np.ndarray, b: np.ndarray, tolerance: float = 1.0) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > tolerance and min(a[3], b[3]) - max(a[1], b[1]) > tolerance


def layout_problems(fig: Figure) -> list[str]:
    """Overlapping texts, legends over panels, text outside the page and pages over MAX_PIXELS a side."""
    canvas = FigureCanvasAgg(fig)  # a page handed back closed has lost its canvas: draw it as savefig would
    canvas.draw()
    problems = []
    width, height = fig.get_figwidth() * DPI, fig.get_figheight() * DPI
    if max(width, height) > MAX_PIXELS:
        problems.append(f"page of {width:.0f}×{height:.0f} px")
    texts, legends, axes = _boxes(fig, canvas.get_renderer())
    page = np.array([0, 0, fig.bbox.width, fig.bbox.height])
    for label, box in texts:
        if box[0] < page[0] - 1 or box[1] < page[1] - 1 or box[2] > page[2] + 1 or box[3] > page[3] + 1:
            problems.append(f"text outside the page: {label!r}")
    if texts:
        boxes = np.array([box for _, box in texts])
        lo, hi = (np.maximum(boxes[:, None, :2], boxes[None, :, :2]),
                  np.minimum(boxes[:, None, 2:], boxes[None, :, 2:]))
        crossing = np.triu(((hi - lo) > 1.0).all(axis=2), k=1)  # both sides overlap by more than a pixel
        for i, j in zip(*np.nonzero(crossing)):
            problems.append(f"texts overlap: {texts[i][0]!r} and {texts[j][0]!r}")
    for lg in legends:
        for label, box in texts:
            if _overlap(lg, box):
                problems.append(f"legend over text {label!r}")
        for ax in axes:
            if _overlap(lg, ax):
                problems.append("legend over a panel")
    return problems
