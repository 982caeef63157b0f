"""Accuracy figures: which mixing variant, view, temperature and loss gives the best student of each pair
(`accuracy_by_mix`), MIX-KD's teacher × student map (`accuracy_heatmap`), the temperature's effect per
teacher kind (`accuracy_vs_temperature`) and TransMix's comparison with and without a teacher (`transmix`).
Accuracies are drawn in %, error bars are 95% CIs over seeds (summary.csv), references are the teacher and
the student trained from scratch."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ...columns import describe, natural, varies
from ...mixing import WITHOUT_RELABEL
from ...tables import Tables
from . import figure
from .data import VALUES, by_pair, kd_order, panels_of, summary_rows, teacher_kind
from .layout import (HEADER, HUES, MAX_SIDE, VIEW_LINES, accuracy_range, finish, legend_below, mix_colours,
                     new_page, paginate, set_titles, text_width, tick_labels)

METRIC = "top1_last"
MAX_DOTS = 48  # dots in one panel before an axis moves into the panel titles
LABEL_WIDTH = 3.2  # inches a row label may take before it wraps
EMPTY = pd.DataFrame(columns=["page", "panel", "kind", "series", "hue", *VALUES])


def _references(tables: Tables, panels: pd.DataFrame, mixes: bool = True) -> pd.DataFrame:
    """Per panel (with its teacher and student), the rows of the teacher, of the student from scratch without
    mixing and, with `mixes`, of the student from scratch with each mix the panel draws."""
    teachers = summary_rows(tables, METRIC, ("teacher",))
    scratch = summary_rows(tables, METRIC, ("scratch",))
    out = []
    for panel, rows in panels.groupby("panel", sort=False):
        teacher, student = rows["teacher"].iloc[0], rows["student"].iloc[0]
        mine = scratch[scratch["name"] == student]
        refs = [teachers[teachers["name"] == teacher].assign(kind="teacher", series="teacher"),
                mine[mine["mix"] == "none"].assign(kind="scratch", series="from scratch")]
        if mixes:
            used = set(rows["mix_label"]) - {"none"}
            refs.append(mine[mine["mix_label"].isin(used)].assign(kind="scratch + mix",
                                                                  series=lambda f: f["mix_label"]))
        out += [r.assign(panel=panel) for r in refs]  # this panel's own: none taken from the one before
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


# ---- accuracy by mix: one panel per pair, a bar per variant ------------------------------------------------

def _by_mix_data(tables: Tables) -> pd.DataFrame:
    kd = summary_rows(tables, METRIC, ("student",))
    if kd.empty:
        return EMPTY
    kd = kd_order(kd, temperature_last=True)
    kd, within = panels_of(kd, ["pair"], ["mix", "mixed_view", "loss"], MAX_DOTS)
    kd = kd.assign(series=describe(kd, tuple(within), always=("mix",)), kind="distilled",
                   hue=kd["temperature"].map(lambda t: f"T={t:g}"))
    data = pd.concat([by_pair(kd), _references(tables, kd)], ignore_index=True)
    return paginate(data[["panel", "kind", "series", "hue", "mix_label", *VALUES]], _dots_size(data), 3,
                    _dots_legend(data))


def _dots_size(data: pd.DataFrame) -> tuple[float, float]:
    kd = data[data["kind"] == "distilled"]
    rows = kd.groupby("panel")["series"].nunique().max()
    _, label, row = tick_labels(kd["series"].unique(), LABEL_WIDTH)
    return 2.6 + label, 1.0 + rows * max(0.22, row, 0.15 * kd["hue"].nunique())


def _dots_legend(data: pd.DataFrame) -> list[str]:
    hues = list(dict.fromkeys(data.loc[data["kind"] == "distilled", "hue"]))
    refs = [k for k in ("teacher", "from scratch", "scratch + mix") if k in set(data["series"]) | set(
        data["kind"])]
    return hues + refs


def _dots(ax, rows: pd.DataFrame, hue_colours: dict) -> list[str]:
    """One row per series, one dot per hue with its 95% CI (accuracy in %: dots, not bars, because the axis
    does not start at 0); returns the row labels."""
    dots = rows[rows["kind"] == "distilled"]
    series = list(dict.fromkeys(dots["series"]))
    hues = list(hue_colours)
    step = 0.6 / max(1, len(hues))
    for k, hue in enumerate(hues):
        mine = dots[dots["hue"] == hue].set_index("series").reindex(series)
        y = np.arange(len(series)) + (k - (len(hues) - 1) / 2) * step
        mean, lo, hi = (100 * mine[c].to_numpy(float) for c in ("mean", "ci_low", "ci_high"))
        ax.errorbar(mean, y, xerr=np.nan_to_num(np.vstack([mean - lo, hi - mean])), fmt="o", ms=3.5,
                    color=hue_colours[hue], elinewidth=0.9, capsize=1.5)
    for i in range(1, len(series), 2):
        ax.axhspan(i - 0.5, i + 0.5, color="0.95", zorder=0, lw=0)
    return series


def _reference_lines(ax, rows: pd.DataFrame, series: list[str]) -> None:
    for kind, ls in (("teacher", "--"), ("scratch", ":")):
        ref = rows[rows["kind"] == kind]
        if len(ref):
            ax.axvline(100 * ref["mean"].iloc[0], color="black", ls=ls, lw=1)
    with_mix = rows[rows["kind"] == "scratch + mix"].set_index("series")["mean"]
    dots = rows[rows["kind"] == "distilled"].drop_duplicates("series").set_index("series")["mix_label"]
    points = [(100 * with_mix[dots[s]], i) for i, s in enumerate(series) if dots.get(s) in with_mix.index]
    if points:
        ax.plot(*zip(*points), "D", color="grey", ms=4, mec="white", mew=0.5)


def _legend_handles(labels: list[str], hue_colours: dict) -> list:
    lines = {"teacher": Line2D([], [], color="black", ls="--", lw=1),
             "from scratch": Line2D([], [], color="black", ls=":", lw=1),
             "scratch + mix": Line2D([], [], ls="", marker="D", color="grey", ms=4)}
    return [Line2D([], [], ls="", marker="o", ms=4, color=hue_colours[label]) if label in hue_colours
            else lines[label] for label in labels]


@figure("accuracy_by_mix", _by_mix_data)
def accuracy_by_mix(data: pd.DataFrame) -> list:
    """Which mixing variant helps distillation? Student top-1 per variant (mix · view · loss) and temperature,
    one panel per (teacher, student) pair, with the teacher (dashed), the student from scratch (dotted) and
    the student from scratch with that mix (◆)."""
    size, legend = _dots_size(data), _dots_legend(data)
    hue_colours = {h: HUES[i % len(HUES)] for i, h in enumerate(legend[:data["hue"].nunique()])}
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        fig, axes = new_page(len(panels), size, 3, legend,
                             "Student accuracy by mixing variant (95% CI over seeds)")
        for ax, panel in zip(axes, panels):
            mine = rows[rows["panel"] == panel]
            series = _dots(ax, mine, hue_colours)
            _reference_lines(ax, mine, series)
            ax.set_yticks(range(len(series)), tick_labels(series, LABEL_WIDTH)[0])
            ax.set_ylim(len(series) - 0.5, -0.5)
            ax.set_xlim(accuracy_range(100 * mine[["mean", "ci_low", "ci_high"]].to_numpy(float).ravel()))
            ax.set_xlabel("top-1 (%)")
        set_titles(fig, axes, panels)
        legend_below(fig, _legend_handles(legend, hue_colours), legend)
        pages.append(finish(fig))
    return pages


# ---- MIX-KD's heatmap: teacher × student per view, mix and temperature -------------------------------------

def _heatmap_data(tables: Tables) -> pd.DataFrame:
    """Each distilled variant's cell, with its panel's `slot` on its page: a block of panels per setting (mix ·
    view · loss), a column per temperature, so T = 1 and T = 4 of one setting sit side by side, and as many
    settings side by side as the page's width takes (panels flow in turn where the temperatures are too many
    for one row)."""
    kd = summary_rows(tables, METRIC, ("student",))
    if kd.empty:
        return EMPTY
    kd = kd_order(kd)
    setting = describe(kd, ("mix", "mixed_view", "loss"), always=("mix",))
    kd = kd.assign(panel=setting + ", T=" + kd["temperature"].map(lambda t: f"{t:g}"), kind="distilled",
                   series=kd["teacher"], hue=kd["student"])
    temps, settings = sorted(kd["temperature"].unique()), list(dict.fromkeys(setting))
    size = _heatmap_size(kd)
    across = int(MAX_SIDE // (len(temps) * size[0]))  # settings side by side: as many as fit, ...
    if across >= 1:  # ... but no more than a landscape page (3:2) of them takes, not one long strip
        block = len(temps) * size[0]
        across = min(across, len(settings), math.ceil(math.sqrt(len(settings) * size[1] * 1.5 / block)))
        ncols, index = across * len(temps), setting.map(settings.index)
        slot = index // across * ncols + index % across * len(temps) + kd["temperature"].map(temps.index)
    else:
        ncols = max(1, int(MAX_SIDE // size[0]))
        slot = kd["panel"].map({p: i for i, p in enumerate(dict.fromkeys(kd["panel"]))})
    per_page = ncols * max(1, int((MAX_SIDE - HEADER) // size[1]))
    kd = kd.assign(page=slot // per_page + 1, slot=slot % per_page, ncols=ncols).sort_values(["page", "slot"])
    # the references labelling each page's rows (teachers) and columns (students from scratch, no mixing)
    teachers = summary_rows(tables, METRIC, ("teacher",))
    scratch = summary_rows(tables, METRIC, ("scratch",))
    scratch = scratch[(scratch["mix"] == "none") & scratch["name"].isin(kd["hue"])]
    refs = pd.concat([teachers[teachers["name"].isin(kd["series"])]
                          .assign(kind="teacher", series=lambda f: f["name"]),
                      scratch.assign(kind="scratch", hue=scratch["name"])])
    refs = pd.concat([refs.assign(page=p) for p in sorted(kd["page"].unique())], ignore_index=True)
    columns = ["page", "slot", "ncols", "panel", "kind", "series", "hue", "temperature", *VALUES]
    return pd.concat([kd, refs], ignore_index=True)[columns]


def _heatmap_size(kd: pd.DataFrame) -> tuple[float, float]:
    teachers, students = kd["series"].unique(), kd["hue"].unique()
    return max(2.6, 1.0 + max(text_width(f"{t} (00.0)", 7) for t in teachers) / 2 + 0.45 * len(students)), \
        0.9 + max(text_width(f"{s} (00.0)", 7) for s in students) + 0.3 * len(teachers)


@figure("accuracy_heatmap", _heatmap_data)
def accuracy_heatmap(data: pd.DataFrame) -> list:
    """MIX-KD's teacher × student map: mean student top-1 for every teacher (rows, with its own top-1) and
    student (columns, with its top-1 from scratch), a row of panels per mixing variant, view and loss and a
    column per temperature — e.g. 'Mix-T & S' (a Mix-T teacher's row, view both) at T = 1 beside T = 4. One
    colour scale for every page; a blank panel is a setting the study does not have at that temperature."""
    kd = data[data["kind"] == "distilled"]
    teachers, students = sorted(kd["series"].unique(), key=natural), sorted(kd["hue"].unique(), key=natural)
    vmin, vmax = 100 * kd["mean"].min(), 100 * kd["mean"].max()
    size, ncols = _heatmap_size(kd), int(kd["ncols"].iloc[0])
    pages = []
    for page, rows in data.groupby("page"):
        teacher_acc = rows[rows["kind"] == "teacher"].set_index("series")["mean"]
        scratch_acc = rows[rows["kind"] == "scratch"].set_index("hue")["mean"]
        cells = rows[rows["kind"] == "distilled"]
        slots = cells.drop_duplicates("slot").set_index("slot")["panel"]
        fig, axes = new_page(ncols * (int(slots.index.max()) // ncols + 1), size, ncols, [],
                             "Student top-1 (%) per teacher (rows, own top-1) and student (columns, "
                             "top-1 from scratch); mean over seeds")
        labelled_rows = set()
        for slot, ax in enumerate(axes):
            if slot not in slots.index:
                ax.remove()  # the grid keeps its place: the columns stay temperatures
                continue
            grid = 100 * cells[cells["slot"] == slot].pivot_table("mean", "series", "hue").reindex(
                index=teachers, columns=students)
            image = ax.imshow(grid.to_numpy(float), cmap="cividis", vmin=vmin, vmax=vmax, aspect="auto")
            for (r, c), m in np.ndenumerate(grid.to_numpy(float)):
                if np.isfinite(m):
                    ax.text(c, r, f"{m:.1f}", ha="center", va="center", fontsize=6,
                            color="black" if m > (vmin + vmax) / 2 else "white")
            ax.set_xticks(range(len(students)), [f"{s} ({_pct(scratch_acc.get(s))})" for s in students],
                          rotation=90)
            first = slot // ncols not in labelled_rows  # teacher names on the first panel of each row
            labelled_rows.add(slot // ncols)
            ax.set_yticks(range(len(teachers)), [f"{t} ({_pct(teacher_acc.get(t))})" for t in teachers]
                          if first else [])
            ax.spines[:].set_visible(False)
        shown = [ax for slot, ax in enumerate(axes) if slot in slots.index]
        fig.colorbar(image, ax=shown, shrink=0.6, label="student top-1 (%)")
        set_titles(fig, shown, [slots[slot] for slot in sorted(slots.index)])
        pages.append(finish(fig))
    return pages


def _pct(value) -> str:
    return "–" if value is None or pd.isna(value) else f"{100 * value:.1f}"


# ---- accuracy against temperature, per teacher kind --------------------------------------------------------

def _temperature_data(tables: Tables) -> pd.DataFrame:
    kd = summary_rows(tables, METRIC, ("student",))
    if kd.empty or kd["temperature"].nunique() < 2:
        return EMPTY
    kd = kd_order(kd)
    kd, within = panels_of(kd, ["pair", "loss"], ["mix", "mixed_view"], 12 * kd["temperature"].nunique())
    kd = kd.assign(panel=kd["panel"] + " (" + teacher_kind(kd) + " teacher)", kind="distilled",
                   series=describe(kd, tuple(within), always=("mix",)), hue=kd["temperature"])
    if "mixed_view" not in within or not varies(kd, "mixed_view"):
        kd["mixed_view"] = "none"  # not in the series' names: not in their line styles either
    key = [(natural(m), natural(s), mix != "none", natural(t)) for m, s, mix, t in
           zip(kd["teacher_model"], kd["student"], kd["teacher_mix"], kd["teacher"])]
    kd = kd.iloc[sorted(range(len(kd)), key=key.__getitem__)]
    colours = mix_colours(tables.variants["mix_label"])
    data = pd.concat([kd, _references(tables, kd, mixes=False)], ignore_index=True)
    data["color"] = data["mix_label"].map(colours).where(data["kind"] == "distilled", "#000000")
    data["linestyle"] = data["mixed_view"].map(VIEW_LINES).where(data["kind"] == "distilled", "-")
    legend = list(dict.fromkeys(kd["series"])) + ["teacher", "from scratch"]
    return paginate(data[["panel", "kind", "series", "hue", "color", "linestyle", *VALUES]], (3.4, 2.6), 4,
                    legend)


@figure("accuracy_vs_temperature", _temperature_data)
def accuracy_vs_temperature(data: pd.DataFrame) -> list:
    """Does the best temperature depend on mixing, and on the teacher's kind? Student top-1 against the KD
    temperature, one line per mixing variant and view (colour: mix, dashes: view), one panel per pair with a
    plain teacher's panel beside its Mix-T counterpart's; 95% CIs over seeds, teacher and scratch as lines."""
    kd = data[data["kind"] == "distilled"]
    series = list(dict.fromkeys(kd["series"]))
    legend = series + ["teacher", "from scratch"]
    style = kd.drop_duplicates("series").set_index("series")[["color", "linestyle"]]
    temps = sorted(kd["hue"].astype(float).unique())
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        fig, axes = new_page(len(panels), (3.4, 2.6), 4, legend, "Student accuracy against temperature "
                                                                  "(95% CI over seeds)")
        for ax, panel in zip(axes, panels):
            mine = rows[rows["panel"] == panel]
            lines = mine[mine["kind"] == "distilled"]
            names = list(dict.fromkeys(lines["series"]))
            for k, name in enumerate(names):
                curve = lines[lines["series"] == name] \
                    .assign(t=lambda f: f["hue"].astype(float)).sort_values("t")
                x = (np.array([temps.index(t) for t in curve["t"]])
                     + (k - (len(names) - 1) / 2) * 0.3 / len(names))
                mean, lo, hi = (100 * curve[c].to_numpy(float) for c in ("mean", "ci_low", "ci_high"))
                ax.errorbar(x, mean, yerr=np.nan_to_num(np.vstack([mean - lo, hi - mean])),
                            color=style.loc[name, "color"], ls=style.loc[name, "linestyle"], marker="o", ms=3,
                            lw=1.1, capsize=1.5, elinewidth=0.7)
            for kind, ls in (("teacher", "--"), ("scratch", ":")):
                ref = mine[mine["kind"] == kind]
                if len(ref):
                    ax.axhline(100 * ref["mean"].iloc[0], color="grey", ls=ls, lw=1)
            ax.set_xticks(range(len(temps)), [f"{t:g}" for t in temps])
            ax.set_ylim(accuracy_range(100 * mine[["mean", "ci_low", "ci_high"]].to_numpy(float).ravel()))
            ax.set(xlabel="KD temperature T", ylabel="top-1 (%)")
        set_titles(fig, axes, panels)
        handles = [Line2D([], [], color=style.loc[s, "color"], ls=style.loc[s, "linestyle"])
                   for s in series]
        handles += [Line2D([], [], color="grey", ls="--"), Line2D([], [], color="grey", ls=":")]
        legend_below(fig, handles, legend)
        pages.append(finish(fig))
    return pages


# ---- TransMix: mixing variants for one student, with and without a teacher ---------------------------------

def _transmix_data(tables: Tables) -> pd.DataFrame:
    if tables.runs.empty or not tables.runs["mix"].isin(WITHOUT_RELABEL).any():
        return EMPTY
    scratch = summary_rows(tables, METRIC, ("scratch",))
    kd = summary_rows(tables, METRIC, ("student",))
    students = (set(scratch.loc[scratch["mix"].isin(WITHOUT_RELABEL), "name"])
                | set(kd.loc[kd["mix"].isin(WITHOUT_RELABEL), "student"]))
    scratch, kd = scratch[scratch["name"].isin(students)], kd[kd["student"].isin(students)]
    kd = kd.assign(hue="KD: " + describe(kd, ("teacher", "mixed_view", "temperature", "loss"),
                                         always=("teacher",)))
    rows = pd.concat([scratch.assign(student=scratch["name"], hue="no teacher"), kd], ignore_index=True)
    rows = rows.assign(panel=rows["student"], series=rows["mix_label"], kind="distilled",
                       mixed=rows["mix"] != "none") \
        .sort_values(["panel", "mixed", "series"], kind="stable",
                     key=lambda c: c.map(natural) if c.name == "panel" else c)
    legend = list(dict.fromkeys(["no teacher", *sorted(kd["hue"].unique())]))
    data = rows[["panel", "kind", "series", "hue", "mix_label", *VALUES]]
    return paginate(data, _dots_size(data), 3, legend)


@figure("transmix", _transmix_data)
def transmix(data: pd.DataFrame) -> list:
    """TransMix's question: does attention-guided mixing beat CutMix and Mixup for a ViT student, with and
    without a teacher? Top-1 per mixing variant (rows) for the student alone (from scratch) and distilled from
    each teacher setting (colours), one panel per student; 95% CIs over seeds."""
    size = _dots_size(data)
    legend = list(dict.fromkeys(["no teacher", *sorted(set(data["hue"]) - {"no teacher"})]))
    hue_colours = {h: HUES[i % len(HUES)] for i, h in enumerate(legend)}
    pages = []
    for page, rows in data.groupby("page"):
        panels = list(dict.fromkeys(rows["panel"]))
        fig, axes = new_page(len(panels), size, 3, legend, "TransMix vs CutMix vs Mixup, with and without a "
                                                           "teacher (95% CI over seeds)")
        for ax, panel in zip(axes, panels):
            mine = rows[rows["panel"] == panel]
            series = _dots(ax, mine, {h: c for h, c in hue_colours.items() if h in set(mine["hue"])})
            ax.set_yticks(range(len(series)), tick_labels(series, LABEL_WIDTH)[0])
            ax.set_ylim(len(series) - 0.5, -0.5)
            ax.set_xlim(accuracy_range(100 * mine[["mean", "ci_low", "ci_high"]].to_numpy(float).ravel()))
            ax.set(xlabel="top-1 (%)")
        set_titles(fig, axes, [f"student {p}" for p in panels])
        legend_below(fig, [Line2D([], [], ls="", marker="o", ms=4, color=hue_colours[h]) for h in legend],
                     legend)
        pages.append(finish(fig))
    return pages
