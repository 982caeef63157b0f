"""The study write-up's figures, one per question, drawn from the tables alone and registered in `plots.PLOTS`.

Conventions shared by every figure, so a variant looks the same everywhere: colour = mixing variant (black =
no mixing), line style = who saw the mixed images, marker = teacher; accuracies in %, error bars and bands
are 95% CIs over seeds (from summary.csv). KD students are grouped by teacher and temperature.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .analysis.stats import VIEW_ORDER, labelled
from .plots import OKABE_ITO, STYLE, finish, plot
from .tables import Tables

VIEW_STYLES = {"none": "-", "student": "-", "teacher": ":", "both": "--"}
MARKERS = "osD^vP*X"
ATTACK_NAMES = {"fgsm": "FGSM", "pgd10": "PGD-10"}


# ---- selecting and labelling rows -------------------------------------------------------------------------

def _variant(frame: pd.DataFrame) -> pd.Series:
    """'mixup · both': the mixing variant and who saw it ('none' alone: nothing mixed; scratch: the mix alone),
    and the KD loss when the students were trained with more than one."""
    view = frame["mixed_view"].astype(object)
    plain = view.isna() | (view == "none")
    variant = frame["mix"].where(plain, frame["mix"] + " · " + view.astype(str))
    students = frame["role"] == "student"
    if frame.loc[students, "loss"].nunique() > 1:
        variant = variant.where(~students, variant + " · " + frame["loss"].astype(str))
    return variant


def _parts(variant: str) -> tuple[str, str, str]:
    """A variant's (mix, view, loss); view 'none' and loss '' where the label has none."""
    mix, *rest = variant.split(" · ")
    view = next((p for p in rest if p in VIEW_ORDER), "none")
    return mix, view, " · ".join(p for p in rest if p not in VIEW_ORDER)


def _variant_key(variant: str) -> tuple:
    mix, view, loss = _parts(variant)
    return mix != "none", mix, VIEW_ORDER.index(view), loss


def _prepared(frame: pd.DataFrame) -> pd.DataFrame:
    frame = labelled(frame)
    return frame.assign(variant=_variant(frame))


def _summary(tables: Tables, metric: str, role: str | None = None) -> pd.DataFrame:
    """summary.csv rows of one metric (optionally one role), with mix/loss labels and the variant."""
    s = tables.summary[tables.summary["metric"] == metric]
    s = s[s["role"] == role] if role is not None and not s.empty else s
    return _prepared(s) if not s.empty else s


def _rows(tables: Tables, metrics: tuple[str, ...], roles: tuple[str, ...] = ("teacher", "scratch", "student")):
    """metrics.parquet rows of the given metrics for complete runs of the given roles, joined with their config."""
    runs = tables.runs[(tables.runs["status"] == "complete") & tables.runs["role"].isin(roles)]
    rows = tables.metrics[tables.metrics["metric"].isin(metrics)]
    if runs.empty or rows.empty:
        return pd.DataFrame()
    config = _prepared(runs)[["run_id", "role", "name", "teacher", "student", "mix", "mixed_view", "temperature",
                              "seed", "variant"]]
    # as in summary.csv: `temperature` is the run's KD temperature, `metric_temperature` the one a value is at
    return rows.rename(columns={"temperature": "metric_temperature"}).merge(config, on="run_id")


def _reference(tables: Tables, metric: str) -> tuple[dict, dict]:
    """Mean accuracy of each teacher (by name) and of each student trained from scratch without mixing."""
    s = _summary(tables, metric)
    if s.empty:
        return {}, {}
    teachers = s[s["role"] == "teacher"].groupby("name")["mean"].mean().to_dict()
    scratch = s[(s["role"] == "scratch") & (s["mix"] == "none")].groupby("student")["mean"].mean().to_dict()
    return teachers, scratch


def _mix_colours(tables: Tables) -> dict[str, str]:
    """Mixing variant → colour, fixed per study: black for none, then the Okabe-Ito colours in name order."""
    runs = tables.runs
    mixes = sorted(set(labelled(runs)["mix"]) - {"none"}) if len(runs) else []
    return {"none": "#000000", **{m: OKABE_ITO[i % 7] for i, m in enumerate(mixes)}}


def _line_style(variant: str, colours: dict) -> dict:
    mix, view, _ = _parts(variant)
    return {"color": colours.get(mix, "grey"), "ls": VIEW_STYLES[view]}


def _groups(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame, str]]:
    """Panels: (title, rows, the column telling lines apart): teachers, students from scratch, then the KD
    students of each teacher at each temperature."""
    groups = [("teachers", frame[frame["role"] == "teacher"], "name"),
              ("students from scratch", frame[frame["role"] == "scratch"], "variant")]
    kd = frame[frame["role"] == "student"]
    for (teacher, temp), rows in kd.groupby(["teacher", "temperature"], sort=True):
        groups.append((f"KD from {teacher}, T={temp:g}", rows, "variant"))
    return [g for g in groups if not g[1].empty]


def _line_keys(rows: pd.DataFrame, key: str) -> list[str]:
    values = rows[key].unique().tolist()
    return sorted(values, key=_variant_key) if key == "variant" else sorted(values)


def _styles(rows: pd.DataFrame, key: str, colours: dict) -> dict[str, dict]:
    """Line styles of one panel: teachers by their own mix (and a marker each), others by variant."""
    if key == "name":
        teacher_mix = rows.groupby("name")["mix"].first()
        return {name: {"color": colours.get(teacher_mix[name], "grey"), "ls": "-", "marker": MARKERS[i % 8]}
                for i, name in enumerate(sorted(teacher_mix.index))}
    return {v: {**_line_style(v, colours), "marker": "o"} for v in _line_keys(rows, key)}


def _grid(n: int, ncols: int, size: tuple[float, float], **kwargs):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=(size[0] * ncols, size[1] * nrows),
                             layout="constrained", **kwargs)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes.flat[:n]


def _legend_below(fig: Figure, axes, ncol: int = 4) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.legend([handles[label] for label in labels], labels, loc="outside lower center", ncol=min(ncol, len(labels)),
               frameon=False)


# ---- figures ----------------------------------------------------------------------------------------------

@plot("accuracy_heatmap")
def accuracy_heatmap(tables: Tables, metric: str = "top1_last") -> Figure | None:
    """MIX-KD's teacher × student table as a picture: mean student accuracy over seeds for every teacher (rows)
    and student (columns), one panel per mixing variant (panel rows) and temperature (panel columns). The
    labels carry each teacher's accuracy and each student's accuracy when trained from scratch."""
    kd = _summary(tables, metric, role="student")
    if kd.empty:
        return None
    teachers, students = sorted(kd["teacher"].unique()), sorted(kd["student"].unique())
    variants, temps = sorted(kd["variant"].unique(), key=_variant_key), sorted(kd["temperature"].unique())
    ref_teacher, ref_scratch = _reference(tables, metric)
    vmin, vmax = 100 * kd["mean"].min(), 100 * kd["mean"].max()
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(variants), len(temps), squeeze=False, layout="constrained",
                                 figsize=(1.6 + (1.0 + 0.9 * len(students)) * len(temps),
                                          0.4 + (0.8 + 0.45 * len(teachers)) * len(variants)))
        for (r, variant), (c, temp) in [(rv, ct) for rv in enumerate(variants) for ct in enumerate(temps)]:
            ax = axes[r, c]
            cell = kd[(kd["variant"] == variant) & (kd["temperature"] == temp)]
            mean = 100 * cell.pivot_table("mean", "teacher", "student").reindex(index=teachers, columns=students)
            sd = 100 * cell.pivot_table("std", "teacher", "student", dropna=False).reindex(index=teachers,
                                                                                           columns=students)
            image = ax.imshow(mean.to_numpy(float), cmap="cividis", vmin=vmin, vmax=vmax, aspect="auto")
            for (i, j), m in np.ndenumerate(mean.to_numpy(float)):
                if np.isfinite(m):
                    s = sd.to_numpy(float)[i, j]
                    ax.text(j, i, f"{m:.1f}" + (f"\n±{s:.1f}" if np.isfinite(s) else ""), ha="center", va="center",
                            fontsize=7, color="black" if m > (vmin + vmax) / 2 else "white")
            ax.set_xticks(range(len(students)), [f"{s}\n(scratch {100 * ref_scratch[s]:.1f})" if s in ref_scratch
                                                 else s for s in students] if r == len(variants) - 1 else [])
            ax.set_yticks(range(len(teachers)), [f"{t} ({100 * ref_teacher[t]:.1f})" if t in ref_teacher else t
                                                 for t in teachers] if c == 0 else [])
            ax.set_title(f"{variant}, T={temp:g}", fontsize=8)
            ax.spines[:].set_visible(False)
        fig.colorbar(image, ax=axes, shrink=0.6, label=f"student {metric.replace('_', ' ')} (%)")
        fig.suptitle("Student accuracy per teacher (rows) and student (columns); mean ± sd over seeds")
        return finish(fig)


@plot("accuracy_vs_temperature")
def accuracy_vs_temperature(tables: Tables, metric: str = "top1_last") -> Figure | None:
    """Does the best temperature depend on mixing? Student accuracy against the KD temperature, one line per
    mixing variant, 95% CI over seeds; the teacher (dashed) and the student from scratch (dotted) as references."""
    kd = _summary(tables, metric, role="student")
    if kd.empty:
        return None
    ref_teacher, ref_scratch = _reference(tables, metric)
    colours = _mix_colours(tables)
    pairs = sorted(kd.groupby(["teacher", "student"]).groups)
    temps = sorted(kd["temperature"].unique())
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(pairs), 3, (3.2, 2.6), sharey=True)
        for ax, (teacher, student) in zip(axes, pairs):
            cell = kd[(kd["teacher"] == teacher) & (kd["student"] == student)]
            variants = sorted(cell["variant"].unique(), key=_variant_key)
            for k, variant in enumerate(variants):
                line = cell[cell["variant"] == variant].sort_values("temperature")
                shift = 2 ** (0.04 * (k - (len(variants) - 1) / 2))  # side by side, so error bars stay readable
                mean = 100 * line["mean"].to_numpy(float)
                err = 100 * np.stack([line["mean"] - line["ci_low"], line["ci_high"] - line["mean"]])
                ax.errorbar(line["temperature"] * shift, mean, yerr=np.nan_to_num(err), marker="o", ms=3, capsize=2,
                            lw=1.2, label=variant, **_line_style(variant, colours))
            if teacher in ref_teacher:
                ax.axhline(100 * ref_teacher[teacher], color="grey", ls="--", lw=0.8, label="teacher")
            if student in ref_scratch:
                ax.axhline(100 * ref_scratch[student], color="grey", ls=":", lw=1, label="student from scratch")
            ax.set_xscale("log", base=2)
            ax.set_xticks(temps, [f"{t:g}" for t in temps])
            ax.minorticks_off()
            ax.set_xlabel("KD temperature T")
            ax.set_title(f"{teacher} → {student}")
        axes[0].set_ylabel(f"{metric.replace('_', ' ')} (%)")
        low, high = kd["ci_low"].fillna(kd["mean"]), kd["ci_high"].fillna(kd["mean"])
        axes[0].set_ylim(max(0, 100 * low.min() - 1), min(100.5, 100 * high.max() + 1))  # 2-seed CIs pass 0 and 100%
        _legend_below(fig, axes)
        fig.suptitle("Student accuracy vs temperature per mixing variant (95% CI over seeds)")
        return finish(fig)


@plot("teacher_entropy")
def teacher_entropy(tables: Tables) -> Figure | None:
    """MIX-KD's smoothness claim, checked: are teachers trained with mixup less confident? Their T=1 output
    entropy over the test images (histogram), mean entropy at the temperatures students use, and per class."""
    rows = _rows(tables, ("entropy_hist", "entropy_mean", "class_entropy"), roles=("teacher",))
    if rows.empty:
        return None
    styles = _styles(rows, "name", _mix_colours(tables))
    label = rows.groupby("name")["mix"].first().to_dict()
    names = sorted(styles)
    with plt.rc_context(STYLE):
        fig, (hist, means, per_class) = plt.subplots(1, 3, figsize=(11, 3.2), layout="constrained",
                                                     gridspec_kw={"width_ratios": [3, 2, 3]})
        width = 0.8 / len(names)
        for k, name in enumerate(names):
            style, mine = styles[name], rows[rows["name"] == name]
            values = {m: g for m, g in mine.groupby("metric")}  # averaged over seeds below, should there be several
            h = values["entropy_hist"].groupby("x")["value"].mean()
            hist.step(h.index, h.to_numpy(), where="mid", color=style["color"], ls=["-", "--", ":", "-."][k % 4],
                      label=f"{name} (mix: {label[name]})")
            m = values["entropy_mean"].groupby("metric_temperature")["value"].mean()
            means.bar(np.arange(len(m)) + (k - (len(names) - 1) / 2) * width, m.to_numpy(), width,
                      color=style["color"], alpha=0.85, hatch=["", "//", "..", "xx"][k % 4], edgecolor="white")
            means.set_xticks(range(len(m)), [f"T={t:g}" for t in m.index])
            c = values["class_entropy"].groupby("class")["value"].mean()
            per_class.plot(c.index, c.to_numpy(), marker=style["marker"], color=style["color"], ms=4, lw=1)
            if len(c) <= 20:
                per_class.set_xticks(c.index, [f"{v:g}" for v in c.index])
        hist.set_yscale("log")
        hist.set(xlabel="entropy at T=1 (nats)", ylabel="fraction of test images", title="entropy histogram")
        means.set(ylabel="mean entropy (nats)", title="mean entropy at T")
        per_class.set(xlabel="true class", ylabel="mean entropy at T=1 (nats)", title="per class")
        fig.legend(*hist.get_legend_handles_labels(), loc="outside lower center", ncol=min(4, len(names)),
                   frameon=False)
        fig.suptitle("Teacher output entropy, trained with and without mixing")
        return finish(fig)


@plot("reliability")
def reliability(tables: Tables) -> Figure | None:
    """Reliability diagrams: accuracy against confidence per 15-bin confidence bin, bins pooled over seeds
    (counts summed), the diagonal being perfect calibration; the legend gives the mean ECE over seeds."""
    rows = _rows(tables, ("reliability_count", "reliability_confidence", "reliability_accuracy", "ece"))
    if rows.empty or not (rows["metric"] == "reliability_count").any():
        return None
    colours = _mix_colours(tables)
    groups = _groups(rows)
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(groups), 4, (2.8, 2.8))
        for ax, (title, group, key) in zip(axes, groups):
            styles = _styles(group, key, colours)
            for line in _line_keys(group, key):
                mine = group[group[key] == line]
                bins = mine[mine["bin"].notna()].pivot_table("value", ["run_id", "bin"], "metric").reset_index()
                count = bins["reliability_count"]
                pooled = pd.DataFrame({"bin": bins["bin"], "count": count,
                                       "conf": count * bins["reliability_confidence"],
                                       "acc": count * bins["reliability_accuracy"]}).groupby("bin").sum()
                ece = mine.loc[mine["metric"] == "ece", "value"].mean()
                ax.plot(pooled["conf"] / pooled["count"], pooled["acc"] / pooled["count"], ms=3, lw=1,
                        label=f"{line} (ECE {ece:.3f})", **styles[line])
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=(0, (2, 2)))
            ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="confidence", ylabel="accuracy", title=title)
            ax.set_aspect("equal")
            ax.legend(fontsize=6, loc="best", framealpha=0.85, edgecolor="none")
        fig.suptitle("Reliability diagrams (15 confidence bins, pooled over seeds)")
        return finish(fig)


def _tsne_panels(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(title, run_id) of the runs to map: each teacher, the student from scratch per mix, and per teacher and
    mix the KD student at the highest temperature, preferring the view 'both'; the lowest seed of each."""
    kd = runs[runs["role"] == "student"]
    picks = pd.concat([runs[runs["role"] != "student"], kd[kd["temperature"] == kd["temperature"].max()]])
    picks = picks.assign(role_rank=picks["role"].map(["teacher", "scratch", "student"].index),
                         mixed=picks["mix"] != "none",
                         view_rank=picks["mixed_view"].map({"both": 0, "student": 1, "teacher": 2, "none": 3}))
    picks = picks.sort_values(["role_rank", "name", "teacher", "student", "mixed", "mix", "view_rank", "seed"])
    picks = picks.drop_duplicates(["role", "name", "teacher", "student", "mix"])
    title = {"teacher": lambda r: f"teacher {r['name']}",
             "scratch": lambda r: f"{r['student']} from scratch\n{r['mix']}",
             "student": lambda r: f"{r['teacher']}→{r['student']}\n{r['variant']}, T={r['temperature']:g}"}
    return [(title[r["role"]](r), run_id) for run_id, r in picks.iterrows()]


@plot("tsne")
def tsne(tables: Tables) -> Figure | None:
    """Penultimate features in 2-D (t-SNE of ≤ 200 test images, coloured by true class) for the runs chosen
    by `_tsne_panels`, titled with their within- over between-class scatter ratio."""
    rows = _rows(tables, ("tsne", "scatter_ratio"))
    maps = rows[rows["metric"] == "tsne"] if not rows.empty else rows
    if maps.empty:
        return None
    runs = rows.drop_duplicates("run_id").set_index("run_id")
    panels = _tsne_panels(runs[runs.index.isin(maps["run_id"])])
    ratio = rows[rows["metric"] == "scatter_ratio"].set_index("run_id")["value"]
    classes = sorted(maps["class"].unique())
    cmap = plt.get_cmap("viridis", len(classes)) if len(classes) > 8 else None
    colour = {c: cmap(i) if cmap else OKABE_ITO[i] for i, c in enumerate(classes)}
    with plt.rc_context(STYLE):
        fig, axes = _grid(len(panels), 4, (2.4, 2.5))
        for ax, (title, rid) in zip(axes, panels):
            points = maps[maps["run_id"] == rid]
            ax.scatter(points["x"], points["y"], c=[colour[c] for c in points["class"]], s=5, lw=0)
            ax.set_title(f"{title}\nS_w/S_b = {ratio.get(rid, np.nan):.2f}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal", adjustable="datalim")
        if len(classes) <= 20:
            handles = [plt.Line2D([], [], ls="", marker="o", ms=4, color=colour[c]) for c in classes]
            fig.legend(handles, [f"{c:g}" for c in classes], title="true class", loc="center left",
                       bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.suptitle("t-SNE of penultimate features (S_w/S_b: within / between-class scatter, lower = tighter)")
        return finish(fig)


@plot("robustness")
def robustness(tables: Tables) -> Figure | None:
    """Do mixing and distillation change adversarial robustness? Top-1 under FGSM and PGD-10 (L∞, pixel space)
    against ε, mean over seeds, per panel group as in the reliability diagrams. No bands: with a handful of
    seeds and seven variants per panel they hide the curves; summary.csv has each point's CI."""
    s = _summary(tables, "robust_top1")
    if s.empty:
        return None
    colours = _mix_colours(tables)
    groups = _groups(s)
    attacks = sorted(s["attack"].unique())
    ticks = sorted(255 * s["epsilon"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(attacks), len(groups), squeeze=False, sharex=True, sharey=True,
                                 figsize=(2.6 * len(groups), 2.4 * len(attacks) + 0.4), layout="constrained")
        for r, attack in enumerate(attacks):
            for c, (title, group, key) in enumerate(groups):
                ax, styles = axes[r, c], _styles(group, key, colours)
                for line in _line_keys(group, key):
                    curve = group[(group[key] == line) & (group["attack"] == attack)].sort_values("epsilon")
                    ax.plot(255 * curve["epsilon"], 100 * curve["mean"], ms=3, lw=1.2, label=line, **styles[line])
                ax.set_title(f"{ATTACK_NAMES.get(attack, attack)}: {title}", fontsize=8)
                ax.set_xticks(ticks, [f"{e:g}" for e in ticks])
                if r == len(attacks) - 1:
                    ax.set_xlabel("ε (× 1/255)")
                if c == 0:
                    ax.set_ylabel("top-1 under attack (%)")
                if r == 0:
                    ax.legend(fontsize=6, frameon=False)
        fig.suptitle("Accuracy under L∞ attacks on the first test images (mean over seeds)")
        return finish(fig)
