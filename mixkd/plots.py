"""Figures, drawn from the tidy tables only (never from run directories), so they can be rebuilt anywhere.

A figure is a function registered in PLOTS: `Tables` → a matplotlib Figure, or None when the tables hold
nothing for it (no students with a teacher, no teachers, ...). `make_plots` saves every figure of a study;
notebooks call the same functions. The paper figures live in `mixkd.figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .tables import Tables  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
         "axes.prop_cycle": matplotlib.cycler(color=OKABE_ITO), "savefig.bbox": "tight"}


PLOTS: dict[str, Callable[[Tables], Figure | None]] = {}


def plot(name: str):
    """Register a figure under the file name it is saved as."""
    def register(draw):
        if name in PLOTS:
            raise ValueError(f"plot {name!r} is registered twice")
        PLOTS[name] = draw
        return draw

    return register


def save(fig, stem: Path) -> list[Path]:
    """PNG for looking, PDF for papers; no timestamps, so an unchanged table gives identical files."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    with plt.rc_context(STYLE):
        fig.savefig(paths[0], dpi=150, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"CreationDate": None, "Producer": None, "Creator": None})
    plt.close(fig)
    return paths


def finish(fig: Figure) -> Figure:
    """Hand a finished figure back without keeping it open in pyplot: many figures in one process don't pile up,
    and a notebook shows it once (as the cell's value), not twice."""
    plt.close(fig)
    return fig


def _mean_sd(frame: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    return frame.groupby(keys, dropna=False)[value].agg(["mean", "std", "count"]).reset_index()


@plot("accuracy_by_mix")
def accuracy_by_mix(tables: Tables, metric: str = "top1_last") -> Figure | None:
    """Student accuracy per mix × mixed view (groups) × temperature (bars), mean ± sd over seeds;
    the teacher (dashed) and the student trained from scratch (dotted; ◆ with that mix) as references."""
    runs = tables.runs
    done = runs[runs["status"] == "complete"].copy()
    done[metric] = done[metric] * 100
    kd = done[done["role"] == "student"].copy()
    if kd.empty:
        return None
    kd["group"] = np.where(kd["mixed_view"] == "none", kd["mix"], kd["mix"] + " · " + kd["mixed_view"].astype(str))
    groups = list(dict.fromkeys(kd.sort_values(["mix", "mixed_view"], key=lambda s: s.map(str))["group"]))
    temps = sorted(kd["temperature"].unique())
    students, teachers = sorted(kd["student"].unique()), list(dict.fromkeys(kd["teacher"]))
    stats = _mean_sd(kd, ["student", "teacher", "group", "temperature"], metric)
    scratch = _mean_sd(done[done["role"] == "scratch"], ["student", "mix"], metric)
    teacher_acc = done[done["role"] == "teacher"].set_index(done[done["role"] == "teacher"]["run_id"])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(students), len(teachers), squeeze=False, sharey=True,
                                 figsize=(1.0 + 0.55 * len(groups) * max(len(temps), 2) * len(teachers) / 2,
                                          2.8 * len(students)))
        width = 0.8 / len(temps)
        cells = [(r, student, c, teacher) for r, student in enumerate(students) for c, teacher in enumerate(teachers)]
        for r, student, c, teacher in cells:
            ax = axes[r, c]
            for k, temp in enumerate(temps):
                cell = stats[(stats["student"] == student) & (stats["teacher"] == teacher) & (stats["temperature"] == temp)]
                cell = cell.set_index("group").reindex(groups)
                ax.bar(np.arange(len(groups)) + (k - (len(temps) - 1) / 2) * width, cell["mean"], width,
                       yerr=cell["std"].fillna(0), capsize=2, label=f"T={temp:g}", color=OKABE_ITO[k % 8])
            tid = kd.loc[kd["teacher"] == teacher, "teacher_id"].iloc[0]
            if tid in teacher_acc.index:
                ax.axhline(teacher_acc.loc[tid, metric], color="black", ls="--", lw=1, label="teacher")
            base = scratch[scratch["student"] == student].set_index("mix")
            if "none" in base.index:
                ax.axhline(base.loc["none", "mean"], color="grey", ls=":", lw=1.2, label="scratch")
            mixed = [(g, group.split(" · ")[0]) for g, group in enumerate(groups)]
            mixed = [(g, mix) for g, mix in mixed if mix != "none" and mix in base.index]
            for j, (g, mix) in enumerate(mixed):
                ax.plot(g, base.loc[mix, "mean"], "D", color="grey", ms=4, label="scratch + mix" if j == 0 else None)
            ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
            ax.set_title(f"{teacher} → {student}")
            if c == 0:
                ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        lo = np.nanmin(stats["mean"] - stats["std"].fillna(0))
        axes[0, 0].set_ylim(bottom=max(0.0, lo - 5))
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False,
                   bbox_to_anchor=(0.5, 1.06))
        fig.suptitle("Student accuracy by mixing variant, mixed view and temperature (mean ± sd over seeds)",
                     y=1.12, fontsize=10)
        return finish(fig)


def make_plots(tables: Tables, out: Path) -> list[Path]:
    """Every registered figure as out/figures/<name>.{png,pdf}; figures without data are skipped."""
    paths = []
    for name, draw in PLOTS.items():
        fig = draw(tables)
        paths += save(fig, Path(out) / "figures" / name) if fig is not None else []
    return paths


from . import figures  # noqa: E402,F401  (registration)
