"""`mixkd compare A B`: do two output folders of one study hold the same numbers?

Why: a study trained again, by another executor, on another machine or after a refactor, should give the
same tables on the CPU (same seeds, same thread count). This checks it and names the first table, run and
column that differ. Where, when and how fast each run was computed is expected to differ and is left out.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import columns

KEYS = {"runs": ["run_id"], "epochs": ["run_id", "epoch"], "metrics": None}
SET_ASIDE = ("timing", "execution", "provenance")  # when, how and where a run was computed, not what
EPOCH_TIMING = ("seconds",)


def comparable_tables(folder: str | Path) -> dict[str, pd.DataFrame]:
    """runs, epochs and metrics of an output folder without provenance, timings and how the runs were executed
    (by the runs table's schema), in a canonical order."""
    folder, tables = Path(folder), {}
    for name, keys in KEYS.items():
        path = folder / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such table (run `mixkd run` or `mixkd report` first)")
        df = pd.read_parquet(path)
        aside = (columns.of_kind(df, *SET_ASIDE) if name == "runs"
                 else EPOCH_TIMING if name == "epochs" else ())
        df = df.drop(columns=[c for c in aside if c in df.columns])
        tables[name] = df.sort_values(keys or list(df.columns), ignore_index=True)
    return tables


def first_difference(a: str | Path, b: str | Path) -> str | None:
    """None when the folders hold the same numbers, else one line naming where they first differ."""
    left, right = comparable_tables(a), comparable_tables(b)
    for name in KEYS:
        x, y = left[name], right[name]
        if list(x.columns) != list(y.columns):
            return f"{name}: columns differ: {sorted(set(x.columns) ^ set(y.columns))}"
        if len(x) != len(y):
            return f"{name}: {len(x)} rows in {a}, {len(y)} in {b}"
        for column in x.columns:
            same = (x[column] == y[column]) | (x[column].isna() & y[column].isna())
            if not same.all():
                i = int((~same).idxmax())
                where = f"run {x.loc[i, 'run_id']}" if "run_id" in x.columns else f"row {i}"
                return f"{name}: {where}, {column}: {x.loc[i, column]!r} vs {y.loc[i, column]!r}"
    return None
