"""Figures, drawn from the tidy tables alone (never from run directories), so they can be rebuilt anywhere.

A figure is two functions registered together: `select` takes from the tables exactly the numbers the figure
draws — a tidy frame, one row per drawn value, naming its page, panel and variant — and `draw` turns that
frame, and nothing else, into one matplotlib figure per page. The frame is written beside the images
(`figures/<name>.csv`), so every drawn number can be checked against summary.csv. Seeds are the only thing
ever pooled: a panel never mixes variants or students, and a study too large for one page gets several.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ...registry import Registry  # noqa: E402
from ...rundir import atomic_write  # noqa: E402
from ...tables import Tables  # noqa: E402
from .layout import DPI, STYLE  # noqa: E402


@dataclass(frozen=True)
class FigureSpec:
    name: str
    select: Callable[[Tables], pd.DataFrame]  # the drawn numbers; empty when the tables hold none
    draw: Callable[[pd.DataFrame], list[Figure]]  # one figure per page, from the drawn numbers alone
    summary: str  # what the figure answers, from its docstring's first paragraph


FIGURES: Registry[FigureSpec] = Registry("figure")


def figure(name: str, select: Callable[[Tables], pd.DataFrame]):
    """Register `draw` with its `select` under the file name the figure is saved as."""
    def register(draw):
        summary = " ".join((draw.__doc__ or "").strip().split("\n\n")[0].split())
        FIGURES.register(name)(FigureSpec(name, select, draw, summary))
        return draw

    return register


def render(name: str, tables: Tables, page: int | None = None) -> tuple[pd.DataFrame, list[Figure]]:
    """A figure's drawn numbers (all pages) and its pages, or only page `page` (a notebook shows one at a
    time); no pages when the tables hold nothing for it."""
    spec = FIGURES.get(name, "figure")
    data = spec.select(tables)
    drawn = data if page is None else data[data["page"] == page]
    with plt.rc_context(STYLE):  # text takes its size when created: the whole drawing in the style
        return data, (spec.draw(drawn) if len(drawn) else [])


def page_stems(name: str, pages: int) -> list[str]:
    """File stems of a figure's pages: `name`, or `name-p1`, `name-p2`, ... when it has several."""
    return [name] if pages == 1 else [f"{name}-p{i}" for i in range(1, pages + 1)]


def _bytes(fig: Figure, fmt: str) -> bytes:
    """PNG for looking, PDF for papers; no timestamps, so unchanged tables give identical files."""
    buf = io.BytesIO()
    metadata = ({"Software": None} if fmt == "png"
                else {"CreationDate": None, "Producer": None, "Creator": None})
    with plt.rc_context(STYLE):
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata)
    return buf.getvalue()


def save(pages: list[Figure], folder: Path, name: str) -> list[Path]:
    """Each page as PNG and PDF, written atomically (a kill or a full disk never leaves half a file), and the
    pages of an earlier, longer version of the figure removed."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig, stem in zip(pages, page_stems(name, len(pages))):
        for fmt in ("png", "pdf"):
            paths.append(folder / f"{stem}.{fmt}")
            atomic_write(paths[-1], _bytes(fig, fmt))
        plt.close(fig)
    stale = [p for p in folder.glob(f"{name}*.*") if _is_page(p, name) and p not in paths]
    for p in stale:
        p.unlink()
    return paths


def _is_page(path: Path, name: str) -> bool:
    stem = path.stem
    return path.suffix in (".png", ".pdf") and (stem == name or (stem.startswith(f"{name}-p")
                                                                  and stem[len(name) + 2:].isdigit()))


def write_figures(tables: Tables, out: Path) -> dict[str, list[Path]]:
    """Every registered figure as figures/<name>[-pK].{png,pdf} with its numbers in figures/<name>.csv; a
    figure without data leaves no files. Returns each drawn figure's page images (PNG)."""
    folder, drawn = Path(out) / "figures", {}
    for name in FIGURES:
        data, pages = render(name, tables)
        paths = save(pages, folder, name)
        csv = folder / f"{name}.csv"
        if pages:
            atomic_write(csv, data.to_csv(index=False))
            drawn[name] = [p for p in paths if p.suffix == ".png"]
        else:
            csv.unlink(missing_ok=True)
    return drawn


from . import accuracy, calibration, entropy, features, robustness  # noqa: E402,F401  (registration)
