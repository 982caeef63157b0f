"""Tidy tables from run directories: runs (one row per run), epochs (run × epoch), metrics
(run × observation).

Rebuilt from the run directories every time, so they can never disagree with what was trained, and
written deterministically so an unchanged study gives byte-identical files. Every column of the runs table
has a declared kind (`mixkd.columns`); a run's `variant_id` is its config without the seed.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from . import columns
from .config import Component, RunSpec, run_id
from .errors import MixkdError
from .rundir import RunDir, atomic_write
from .study import Study

RUN_COLUMNS = ["run_id", "variant_id", "variant", "study", "role", "name", "model", "teacher", "student",
               "dataset", "mix", "mix_alpha", "temperature", "mixed_view", "loss", "seed", "epochs", "status",
               "top1_last", "top1_best", "train_seconds"]
SUMMARY_SKIP = {"run_id", "traceback"}
# integers that a run without a recipe (a checkpoint teacher) or a failed run leaves empty: kept integers
INTEGER_COLUMNS = ("seed", "epochs", "batch_size", "eval_batch_size", "best_epoch", "lockstep_size", "fused_size",
                   "resumed_from_epoch")


def _flat(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _prefixed(prefix: str, component: Component) -> dict:
    """mixup with alpha 1 → {mix: mixup, mix_alpha: 1}."""
    params = {k: v for k, v in component.as_dict().items() if k != "name"}
    return {prefix: component.name, **{f"{prefix}_{k}": _flat(v) for k, v in params.items()}}


def variant_id(spec: RunSpec) -> str:
    """The run's config without its seed, with the names it goes by: runs that differ only in seed share
    it."""
    config = {k: v for k, v in spec.config.items() if k != "seed"}
    n = spec.names
    return run_id({"config": config, "labels": {"name": n.name, "teacher": n.teacher, "student": n.student}})


def run_row(spec: RunSpec, study: Study, summary: dict | None, teacher: RunSpec | None) -> dict:
    run, d, names = spec.run, spec.run.distill, spec.names
    recipe = {k: _flat(v) for k, v in (run.recipe.as_dict() if run.recipe else {}).items()
              if k not in ("schedule", "optimizer")}
    schedule = {**_prefixed("schedule", run.recipe.schedule), **_prefixed("optimizer", run.recipe.optimizer)} \
        if run.recipe else {}
    row = {"run_id": spec.run_id, "variant_id": variant_id(spec), "study": study.name, "role": run.role,
           "name": names.name, "model": run.model, "teacher": names.teacher, "student": names.student,
           "teacher_id": run.teacher,
           "teacher_model": teacher.run.model if teacher else None,
           "teacher_mix": teacher.run.mix.name if teacher else None,
           **_prefixed("dataset", run.dataset), **_prefixed("mix", run.mix),
           "temperature": run.temperature, "mixed_view": d.mixed_view if d else None,
           **_prefixed("loss", run.loss),
           "seed": run.seed, **recipe, **schedule,
           "model_args": json.dumps(run.model_args.thaw(), sort_keys=True),
           "status": summary["status"] if summary else "pending"}
    row.update({k: v for k, v in (summary or {}).items() if k not in SUMMARY_SKIP and k not in row})
    return row


def runs_table(study: Study, out: Path) -> pd.DataFrame:
    return build_runs_table(study, {r.run_id: RunDir(out, r.run_id).read_summary() for r in study.runs})


def build_runs_table(study: Study, summaries: dict[str, dict | None]) -> pd.DataFrame:
    """One row per run of `study` from its config and summary (None: pending); every column of a declared
    kind."""
    specs = {r.run_id: r for r in study.runs}
    rows = []
    for spec in study.runs:
        teacher = spec.run.teacher
        rows.append(run_row(spec, study, summaries.get(spec.run_id), specs[teacher] if teacher else None))
    df = pd.DataFrame(rows)
    df.insert(2, "variant", columns.variant_labels(df))
    rest = sorted((c for c in df.columns if c not in RUN_COLUMNS),
                  key=lambda c: (columns.KINDS.index(columns.kind(c)), c))
    df = df.reindex(columns=RUN_COLUMNS + rest)  # a fixed order, however the configs' keys were ordered
    return df.astype({c: "Int64" for c in INTEGER_COLUMNS if c in df.columns})


def epochs_table(study: Study, out: Path) -> pd.DataFrame:
    rows = [{"run_id": spec.run_id, **record}
            for spec in study.runs for record in RunDir(out, spec.run_id).read_epochs()]
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


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def write_tables(study: Study, out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, epochs = runs_table(study, out), epochs_table(study, out)
    atomic_write(out / "runs.csv", runs.to_csv(index=False))
    atomic_write(out / "runs.parquet", parquet_bytes(runs))
    atomic_write(out / "epochs.parquet", parquet_bytes(epochs))
    atomic_write(out / "metrics.parquet", parquet_bytes(metrics_table(study, out)))
    return runs, epochs


@dataclass(frozen=True)
class Tables:
    """A finished study's tables, as figures and notebooks read them: nothing from run directories."""

    runs: pd.DataFrame
    metrics: pd.DataFrame
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    leaderboard: pd.DataFrame

    @cached_property
    def variants(self) -> pd.DataFrame:
        """One row per variant: its config columns and labels (`columns.labelled`), keyed by variant_id."""
        return columns.labelled(self.runs.drop_duplicates("variant_id")).set_index("variant_id", drop=False)


def read_tables(folder: str | Path) -> Tables:
    """The tables in a study's output folder (or a copy of them, e.g. results/quickstart); statistics not yet
    computed are empty. A folder without a runs table is one line of error."""
    folder = Path(folder)
    if not (folder / "runs.parquet").is_file():
        where = "no such folder" if not folder.is_dir() else "no runs.parquet in it"
        raise MixkdError(f"{folder}: not the output folder of a study ({where}); `mixkd run STUDY` writes "
                         f"one, e.g. out/quickstart, and results/quickstart holds a finished one")

    def read(name: str, reader, columns: list[str]) -> pd.DataFrame:
        return reader(folder / name) if (folder / name).exists() else pd.DataFrame(columns=columns)

    return Tables(runs=pd.read_parquet(folder / "runs.parquet"),
                  metrics=read("metrics.parquet", pd.read_parquet, ["run_id", "metric", "value"]),
                  summary=read("summary.parquet", pd.read_parquet, ["variant_id", "metric", "mean"]),
                  comparisons=read("comparisons.csv", _read_csv, ["axis", "a", "b", "mean_diff"]),
                  leaderboard=read("leaderboard.csv", _read_csv, ["teacher", "student", "rank"]))


def _read_csv(path: Path) -> pd.DataFrame:
    """A statistics CSV as written: labels stay strings ('none' is not NaN, '1' not a number)."""
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype={"a": str, "b": str},
                       low_memory=False)
