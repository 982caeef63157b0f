"""The runs table's schema: what each column is, and the variants the columns define.

Statistics pool runs that differ only in their seed, `mixkd compare` ignores how and where runs were
computed, and figures name what they draw: all of them read the kind of a column here instead of keeping
their own column lists, so a new config field or summary value cannot be silently pooled or compared.

A *variant* is a run's every config column but the seed. `variant_id` identifies it; `variant` is a
readable label naming only the axes that vary within the study (student names, not models; a mixer's
parameters only where two variants of one mixer exist).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import torch

from .config import ROLES, VIEW_ORDER, Recipe  # noqa: F401 - VIEW_ORDER: the one definition, for report/
from .metrics import METRICS
from .provenance import environment

KINDS = ("key", "config", "seed", "result", "timing", "execution", "provenance")
COMPONENTS = ("dataset", "mix", "loss", "schedule", "optimizer")  # {name, **params} → a name column and one per parameter

_NAMED = {
    # identifiers, and labels derived from config columns (`labelled`)
    **dict.fromkeys(("run_id", "variant_id", "variant", "mix_label", "loss_label", "pair"), "key"),
    **dict.fromkeys(("study", "role", "name", "model", "model_args", "teacher", "student", "teacher_id",
                     "teacher_model", "teacher_mix", "temperature", "mixed_view"), "config"),
    **dict.fromkeys((f.name for f in dataclasses.fields(Recipe)), "config"),
    "seed": "seed",
    **dict.fromkeys(("status", "error", "top1_best", "best_epoch", "eval_split", "distiller_params"), "result"),
    **dict.fromkeys((f"{m}_last" for m in METRICS), "result"),
    **dict.fromkeys((f"ema_{m}_last" for m in METRICS), "result"),  # a recipe's EMA of the weights
    **dict.fromkeys(("started_at", "finished_at", "wall_seconds", "train_seconds", "images_per_s"), "timing"),
    **dict.fromkeys(("resumed_from_epoch", "lockstep_size", "fused_size"), "execution"),
    **dict.fromkeys(environment(torch.device("cpu")), "provenance"),
}
_PREFIXES = {**{f"{c}_": "config" for c in COMPONENTS}, "engine_": "execution"}


def kind(column: str) -> str:
    """The kind of a runs-table column; a column nobody declared is a bug, not a silent new variant axis."""
    if column in _NAMED:
        return _NAMED[column]
    for prefix, k in _PREFIXES.items():
        if column.startswith(prefix) or column == prefix[:-1]:
            return k
    raise ValueError(f"runs table column {column!r} has no declared kind: declare it in mixkd/columns.py")


def of_kind(frame: pd.DataFrame, *kinds: str) -> list[str]:
    """`frame`'s columns of the given kinds, in frame order."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown column kinds {sorted(unknown)}; known: {KINDS}")
    return [c for c in frame.columns if kind(c) in kinds]


def varying(frame: pd.DataFrame, columns: list[str]) -> list[str]:
    """Those of `columns` that take more than one value (NaN counting as one) in `frame`."""
    return [c for c in columns if c in frame.columns and frame[c].map(str).nunique() > 1]


# ---- readable labels ---------------------------------------------------------------------------------------

def fmt(value) -> str:
    """A value as labels write it: 4.0 → '4', 0.0005 → '0.0005'."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    return f"{value:g}" if isinstance(value, (int, float, np.number)) else str(value)


def natural(text) -> tuple:
    """Sort key reading numbers as numbers: resnet8 before resnet14 before resnet110."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", str(text)))


def component_label(frame: pd.DataFrame, prefix: str) -> pd.Series:
    """A component's name plus the parameters telling apart variants of that name within `frame`, e.g. 'mixup'
    when there is one mixup, 'pmu' and 'pmu(reference_sampling)' when two PMUs differ in that flag, or
    'mixup(alpha=0.2)' and 'mixup(alpha=1)'. A true flag is always named (it changes what the method is:
    `kd(standardise)` is logit-standardised KD even where it is the only KD), a false or unset one never."""
    params = [c for c in frame.columns if c.startswith(f"{prefix}_") and kind(c) == "config"]

    def true(value) -> bool:  # a flag's value, as read from a table (a bool, or its text)
        return (isinstance(value, (bool, np.bool_)) and bool(value)) or (isinstance(value, str) and value == "True")

    def param(column: str, value) -> str:
        name = column[len(prefix) + 1:]
        if isinstance(value, (bool, np.bool_)) or value in ("True", "False"):
            return name if true(value) else ""
        return "" if pd.isna(value) else f"{name}={fmt(value)}"

    def label(name, group: pd.DataFrame) -> pd.Series:
        differ = varying(group, params)
        vary = [c for c in params if c in differ or group[c].map(true).all()]
        if not vary:
            return pd.Series(fmt(name), index=group.index, dtype=object)
        parts = group[vary].apply(lambda r: ",".join(p for c in vary if (p := param(c, r[c]))), axis=1)
        return parts.map(lambda p: f"{name}({p})" if p else str(name)).astype(object)

    if frame.empty or prefix not in frame.columns:
        return pd.Series(index=frame.index, dtype=object)
    groups = [label(name, g) for name, g in frame.groupby(prefix, dropna=False, sort=False)]
    return pd.concat(groups).reindex(frame.index)


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with `mix_label`, `loss_label` and `pair` (teacher→student) beside its columns."""
    return frame.assign(mix_label=component_label(frame, "mix"), loss_label=component_label(frame, "loss"),
                        pair=(frame["teacher"].astype(str) + "→" + frame["student"].astype(str)).where(
                            frame["teacher"].notna()))


# Each axis a label can name: the column its values are told apart by, and how a value is written
# (`mixed_view` only where something was mixed, and it varies only among those rows; `view`, a panel's,
# wherever it is set).
LABEL_AXES = {
    "pair": ("pair", lambda r: r["pair"]),
    "teacher": ("teacher", lambda r: r["teacher"]),
    "student": ("student", lambda r: r["student"]),
    "mix": ("mix_label", lambda r: r["mix_label"]),
    "mixed_view": ("mixed_view", lambda r: r["mixed_view"] if _mixed(r) else ""),
    "view": ("mixed_view", lambda r: r["mixed_view"] if r["mixed_view"] not in ("none", None) else ""),
    "temperature": ("temperature", lambda r: f"T={r['temperature']:g}"),
    "loss": ("loss_label", lambda r: r["loss_label"]),
}


def _mixed(r) -> bool:
    return r["mix"] != "none" and r["mixed_view"] not in ("none", None) and not pd.isna(r["mixed_view"])


def varies(rows: pd.DataFrame, axis: str) -> bool:
    """Whether `axis` takes more than one value among `rows` (`labelled` rows)."""
    if axis == "mixed_view":
        rows = rows[rows.apply(_mixed, axis=1)] if len(rows) else rows
    return rows[LABEL_AXES[axis][0]].map(str).nunique() > 1


def describe(rows: pd.DataFrame, axes: tuple[str, ...], always: tuple[str, ...] = ()) -> pd.Series:
    """Per row, the values of those `axes` that vary within `rows` (and of `always`), joined by ' · '.
    `rows` must be `labelled`."""
    if rows.empty:
        return pd.Series(index=rows.index, dtype=object)
    shown = [a for a in axes if a in always or varies(rows, a)]
    return rows.apply(lambda r: " · ".join(t for a in shown if (t := LABEL_AXES[a][1](r))),
                      axis=1).astype(object)


KD_AXES = ("pair", "mix", "mixed_view", "temperature", "loss")


def variant_labels(runs: pd.DataFrame) -> pd.Series:
    """Every run's `variant` label: 'teacher NAME', 'STUDENT from scratch[ · MIX]', or for a distilled student
    the KD axes that vary among the study's students ('resnet56→resnet20 · pmu(reference_sampling) · both ·
    T=4' in a study with several pairs, mixes, views and temperatures but one loss)."""
    frame = labelled(runs)
    label = pd.Series("", index=runs.index, dtype=object)
    teachers, scratch, kd = (frame["role"] == r for r in ROLES)
    label[teachers] = "teacher " + frame.loc[teachers, "name"].astype(str)
    mixes = describe(frame[scratch], ("mix",))
    label[scratch] = [f"{s} from scratch" + (f" · {m}" if m else "")
                      for s, m in zip(frame.loc[scratch, "student"], mixes)]
    if kd.any():
        text = describe(frame[kd], KD_AXES)
        label[kd] = text.where(text != "", frame.loc[kd, "pair"])  # one KD variant alone: name its pair
    return label
