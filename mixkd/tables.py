"""Tidy tables from run directories: runs (one row per run) and epochs (one row per run × epoch).

Rebuilt from the run directories every time, so they can never disagree with what was trained, and
written deterministically so an unchanged study gives byte-identical files.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .rundir import RunDir, atomic_write
from .study import RunSpec, Study

RUN_COLUMNS = ["run_id", "study", "role", "name", "model", "teacher", "student", "dataset", "mix", "mix_alpha",
               "temperature", "mixed_view", "loss", "seed", "epochs", "status", "top1_last", "top1_best",
               "train_seconds"]
SUMMARY_SKIP = {"run_id", "traceback"}


def _flat(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _prefixed(prefix: str, component: dict) -> dict:
    """{name: mixup, alpha: 1} → {mix: mixup, mix_alpha: 1}."""
    return {prefix: component["name"], **{f"{prefix}_{k}": _flat(v) for k, v in component.items() if k != "name"}}


def run_row(spec: RunSpec, study: Study, summary: dict | None, teacher: RunSpec | None) -> dict:
    c, d = spec.config, spec.config["distill"]
    recipe = {k: _flat(v) for k, v in (c["recipe"] or {}).items() if k != "schedule"}
    schedule = _prefixed("schedule", c["recipe"]["schedule"]) if c["recipe"] else {}
    row = {"run_id": spec.run_id, "study": study.name, "role": c["role"], "name": spec.labels["name"], "model": c["model"],
           "teacher": spec.labels["teacher"], "student": spec.labels["student"],
           "teacher_id": d["teacher"] if d else None,
           "teacher_model": teacher.config["model"] if teacher else None,
           "teacher_mix": teacher.config["mix"]["name"] if teacher else None,
           **_prefixed("dataset", c["dataset"]), **_prefixed("mix", c["mix"]),
           "temperature": d["temperature"] if d else None, "mixed_view": d["mixed_view"] if d else None,
           **_prefixed("loss", d["loss"] if d else {"name": "ce"}),
           "seed": c["seed"], **recipe, **schedule, "model_args": json.dumps(c["model_args"], sort_keys=True),
           "status": summary["status"] if summary else "pending"}
    row.update({k: v for k, v in (summary or {}).items() if k not in SUMMARY_SKIP and k not in row})
    return row


def runs_table(study: Study, out: Path) -> pd.DataFrame:
    specs = {r.run_id: r for r in study.runs}
    rows = []
    for spec in study.runs:
        d = spec.config["distill"]
        rows.append(run_row(spec, study, RunDir(out, spec.run_id).read_summary(), specs[d["teacher"]] if d else None))
    df = pd.DataFrame(rows)
    extra = [c for c in df.columns if c not in RUN_COLUMNS]
    return df.reindex(columns=RUN_COLUMNS + extra)


def epochs_table(study: Study, out: Path) -> pd.DataFrame:
    rows = [{"run_id": spec.run_id, **record} for spec in study.runs for record in RunDir(out, spec.run_id).read_epochs()]
    return pd.DataFrame(rows, columns=None if rows else ["run_id", "epoch", "lr", "train_loss", "test_top1",
                                                         "test_loss", "seconds"])


def metrics_table(study: Study, out: Path) -> pd.DataFrame:
    """Every run's analysis rows, with its run_id: one observation per row."""
    frames = [df.assign(run_id=spec.run_id) for spec in study.runs
              if (df := RunDir(out, spec.run_id).read_analysis()) is not None]
    if not frames:
        return pd.DataFrame(columns=["run_id", "metric", "value"])
    table = pd.concat(frames, ignore_index=True)
    return table[["run_id", *[c for c in table.columns if c != "run_id"]]]


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_tables(study: Study, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, epochs = runs_table(study, out), epochs_table(study, out)
    atomic_write(out / "runs.csv", runs.to_csv(index=False))
    atomic_write(out / "runs.parquet", _parquet_bytes(runs))
    atomic_write(out / "epochs.parquet", _parquet_bytes(epochs))
    atomic_write(out / "metrics.parquet", _parquet_bytes(metrics_table(study, out)))
    return runs, epochs


@dataclass(frozen=True)
class Tables:
    """A finished study's tables, as figures and notebooks read them: nothing from run directories."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    summary: pd.DataFrame
    comparisons: pd.DataFrame


def read_tables(folder: str | Path) -> Tables:
    """The tables in a study's output folder (or a copy of them, e.g. results/quickstart); absent ones are empty."""
    folder = Path(folder)

    def read(name: str, reader, columns: list[str]) -> pd.DataFrame:
        return reader(folder / name) if (folder / name).exists() else pd.DataFrame(columns=columns)

    return Tables(runs=read("runs.parquet", pd.read_parquet, RUN_COLUMNS),
                  metrics=read("metrics.parquet", pd.read_parquet, ["run_id", "metric", "value"]),
                  summary=read("summary.csv", pd.read_csv, ["metric", "mean"]),
                  comparisons=read("comparisons.csv", pd.read_csv, ["axis", "a", "b", "mean_diff"]))
