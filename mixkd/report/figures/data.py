"""Picking a figure's numbers from the tables: summary rows of one metric with their variants' labels, in the
order figures draw them. The drawn frame keeps summary.csv's keys (variant_id, metric, qualifiers) and values
(n, mean, ci_low, ci_high), so each drawn number can be looked up there."""

from __future__ import annotations

import pandas as pd

from ...columns import LABEL_AXES, VIEW_ORDER, describe, natural
from ...tables import Tables

QUALIFIERS = ("metric_temperature", "attack", "epsilon", "bin", "class", "x")
VALUES = ["variant_id", "variant", "metric", *QUALIFIERS, "n", "mean", "ci_low", "ci_high"]
LABELS = ["mix_label", "loss_label", "pair", "teacher_mix", "teacher_model", "name"]


def summary_rows(tables: Tables, metric: str, roles: tuple[str, ...], scalar: bool = True) -> pd.DataFrame:
    """summary.csv's rows of `metric` for variants of `roles` (only those without qualifiers when `scalar`),
    with every label a figure draws (`columns.labelled`)."""
    s = tables.summary.reindex(columns=list(dict.fromkeys([*tables.summary.columns, "role", *VALUES])))
    rows = s[(s["metric"] == metric) & s["role"].isin(roles)]
    if scalar:
        rows = rows[rows[[q for q in QUALIFIERS if q in rows.columns]].isna().all(axis=1)]
    labels = tables.variants[["variant_id", *LABELS]].reset_index(drop=True)
    rows = rows.drop(columns=[c for c in LABELS if c in rows.columns]).merge(labels, on="variant_id")
    return rows.reindex(columns=[*rows.columns, *[q for q in QUALIFIERS if q not in rows.columns]])


def by_pair(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows in natural order of teacher, then student (stable within)."""
    pairs = list(zip(rows["teacher"], rows["student"]))
    return rows.iloc[sorted(range(len(rows)), key=lambda i: (natural(pairs[i][0]), natural(pairs[i][1])))]


def scratch_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Students from scratch by name, each without mixing first, then by mix."""
    key = [(natural(n), m != "none", label)
           for n, m, label in zip(rows["name"], rows["mix"], rows["mix_label"])]
    return rows.iloc[sorted(range(len(rows)), key=key.__getitem__)]


def kd_order(rows: pd.DataFrame, temperature_last: bool = False) -> pd.DataFrame:
    """Distilled variants in reading order: without mixing first, then by mix, view, temperature and loss (or
    loss, then temperature, where temperatures are told apart by colour rather than by row)."""
    key = pd.DataFrame({"mixed": rows["mix"] != "none", "mix": rows["mix_label"],
                        "view": rows["mixed_view"].map(lambda v: VIEW_ORDER.index(v) if v in VIEW_ORDER
                                                       else -1),
                        "t": rows["temperature"], "loss": rows["loss_label"]})
    order = ["mixed", "mix", "view", "loss", "t"] if temperature_last else list(key.columns)
    return rows.loc[key.sort_values(order, kind="stable").index]


def panels_of(rows: pd.DataFrame, panel_axes: list[str], within: list[str], max_items: int,
              always: tuple[str, ...] = ("pair",)) -> tuple[pd.DataFrame, list[str]]:
    """`rows` with a `panel` title each, moving axes from the end of `within` (what a panel tells apart: its
    dots or lines) into the titles while a panel would hold more than `max_items` of them. Once the view names
    panels, the variants without mixing (one run whatever the view) are drawn in each view's panel, as the
    reference the mixed variants there are read against. Returns those rows and the axes left within."""
    within, panel_axes = list(within), list(panel_axes)
    while True:
        keys = [LABEL_AXES[a][0] for a in panel_axes if a != "view"]
        drawn = plain_in_every_view(rows, keys) if "view" in panel_axes else rows
        panel = describe(drawn, tuple(panel_axes), always=always)
        items = describe(drawn, tuple(within), always=tuple(within)) + drawn["temperature"].map(str)
        if drawn.assign(panel=panel, item=items).groupby("panel")["item"].nunique().max() <= max_items \
                or len(within) == 1:
            return drawn.assign(panel=panel), within
        moved = within.pop()  # a panel's view names its rows without mixing too: `view`, not `mixed_view`
        panel_axes.append("view" if moved == "mixed_view" else moved)


def plain_in_every_view(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The rows without mixing (stored with the view 'none') repeated, in place, under each view the mixed rows
    of their panel (the same `keys` columns) use."""
    ordered = rows.assign(position=range(len(rows)))
    mixed = ordered["mix"] != "none"
    key = (lambda frame: list(zip(*(frame[k] for k in keys)))) if keys else (lambda frame: [()] * len(frame))
    views: dict[tuple, set] = {}
    for k, view in zip(key(ordered[mixed]), ordered.loc[mixed, "mixed_view"]):
        views.setdefault(k, set()).add(view)
    plain = ordered[~mixed].assign(key=key(ordered[~mixed]))
    parts = [ordered[mixed]]
    for k in dict.fromkeys(plain["key"]):
        used = [v for v in VIEW_ORDER if v != "none" and v in views.get(k, ())] or ["none"]
        parts += [plain[plain["key"] == k].drop(columns="key").assign(mixed_view=v) for v in used]
    expanded = pd.concat(parts, ignore_index=True)
    return expanded.sort_values("position", kind="stable").drop(columns="position").reset_index(drop=True)


def teacher_kind(rows: pd.DataFrame) -> pd.Series:
    """'plain' or 'Mix-T (mixup)' for each distilled row's teacher."""
    return rows["teacher_mix"].map(lambda m: "plain" if m == "none" else f"Mix-T ({m})")


def teacher_series(teachers: pd.DataFrame, model: pd.Series) -> pd.Series:
    """A teacher's line among its model's teachers: 'plain' or 'Mix-T (mixup)', or its name where two teachers
    of one model share a kind."""
    kind = teachers["mix_label"].map(lambda m: "plain" if m == "none" else f"Mix-T ({m})")
    named = teachers.assign(model=model, kind=kind).drop_duplicates("name")
    clash = set(named[named.groupby(["model", "kind"])["name"].transform("size") > 1]["name"])
    return kind.where(~teachers["name"].isin(clash), teachers["name"])
