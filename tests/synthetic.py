"""A study's tables as if every run had trained, with known values and no training: runs, epochs and metrics
shaped exactly like a real study's, for testing reports on grids as large as the paper study's."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from mixkd.analysis import COLUMNS
from mixkd.config import RunSpec
from mixkd.study import Study
from mixkd.tables import build_runs_table

EPSILONS = (1 / 255, 2 / 255, 4 / 255)
MIX_EFFECT = {"none": 0.0, "mixup": 0.01, "cutmix": 0.006, "fmu": 0.012, "pmu": 0.004, "transmix": 0.015}
VIEW_EFFECT = {"none": 0.0, "student": 0.0, "teacher": -0.01, "both": 0.008}


def _unit(*key) -> float:
    """A fixed number in [0, 1) per key: seed noise that is the same on every machine."""
    return zlib.crc32(repr(key).encode()) / 2 ** 32


def top1(spec) -> float:
    """The known final accuracy of a run: a base per model, plus effects of distillation, mixing, view and T,
    plus ±0.6 points of seed noise."""
    run, d = spec.run, spec.run.distill
    acc = 0.55 + 0.1 * _unit(run.model) + MIX_EFFECT.get(run.mix.name, 0.0)
    if run.is_teacher:
        acc += 0.1
    if d:
        acc += 0.02 + VIEW_EFFECT[d.mixed_view] + 0.002 * d.temperature
    return acc + 0.012 * (_unit(spec.run_id) - 0.5)


def summaries(study: Study,
              status: Callable[[RunSpec], str] = lambda spec: "complete") -> dict[str, dict | None]:
    """Each run's summary as `status(run)` says: complete (with its known top-1), failed, or pending
    (none)."""
    out = {}
    for spec in study.runs:
        acc, state = top1(spec), status(spec)
        out[spec.run_id] = None if state == "pending" else \
            {"run_id": spec.run_id, "status": "failed", "error": "NonFiniteLoss: training loss became nan"} \
            if state == "failed" else \
            {"run_id": spec.run_id, "status": "complete", "top1_last": acc, "top1_best": acc + 0.005,
             "best_epoch": 10, "train_seconds": 60.0, "top5_last": min(1.0, acc + 0.2), "nll_last": 1.2,
             "ece_last": 0.05, "brier_last": 0.4, "entropy_last": 0.6}
    return out


def last_runs(study: Study, failed: int = 0, pending: int = 0) -> Callable[[RunSpec], str]:
    """A status: the study's last `failed` runs failed, the `pending` before them not yet run (runs are
    ordered teachers, scratch, students)."""
    index = {spec.run_id: i for i, spec in enumerate(study.runs)}
    n = len(study.runs)
    return lambda spec: ("failed" if index[spec.run_id] >= n - failed else
                         "pending" if index[spec.run_id] >= n - failed - pending else "complete")


def _block(run_ids, metric: str, values, **qualifiers) -> pd.DataFrame:
    frame = pd.DataFrame({"run_id": run_ids, "metric": metric, "value": values, **qualifiers})
    return frame.reindex(columns=["run_id", *COLUMNS])


def metrics_rows(study: Study, runs: pd.DataFrame, num_classes: int, tsne_points: int = 200) -> pd.DataFrame:
    """Every analysis row a real run writes (see mixkd.analysis), with plausible values derived from top-1."""
    done = runs[runs["status"] == "complete"]
    rng = np.random.default_rng(0)
    ids, acc = done["run_id"].to_numpy(), done["top1_last"].to_numpy(float)
    specs = {s.run_id: s for s in study.runs}
    blocks = [_block(ids, m, v) for m, v in (("top1", acc), ("top5", np.minimum(1, acc + 0.2)),
                                                ("nll", 2 - acc), ("brier", 1 - acc),
                                                ("ece", 0.1 * (1 - acc)), ("entropy", 1 - acc),
                                                ("logit_norm", 10 * acc), ("logit_std", 3 * acc),
                                                ("scatter_ratio", 1 - acc))]
    temps = [(rid, t) for rid in ids for t in _temperatures(specs[rid])]
    t_ids, t_values = np.array([r for r, _ in temps]), np.array([t for _, t in temps])
    blocks += [_block(t_ids, m, np.full(len(temps), v) / t_values, temperature=t_values)
               for m, v in (("entropy_mean", 0.8), ("entropy_median", 0.5), ("max_prob", 0.7))]
    classes = np.tile(np.arange(num_classes), len(ids))
    blocks.append(_block(np.repeat(ids, num_classes), "class_entropy", rng.uniform(0, 1, len(classes)),
                         temperature=1.0, **{"class": classes}))
    bins = np.tile(np.arange(20), len(ids))
    hist = rng.dirichlet(np.ones(20), len(ids)).ravel()
    blocks.append(_block(np.repeat(ids, 20), "entropy_hist", hist, temperature=1.0, bin=bins,
                         x=(bins + 0.5) / 20))
    rel = np.tile(np.arange(5, 15), len(ids))  # the high-confidence bins only, as a good model has
    conf = (rel + 0.5) / 15
    for m, v in (("reliability_count", np.full(len(rel), 30.0)), ("reliability_confidence", conf),
                 ("reliability_accuracy", np.clip(conf - 0.03 * (1 - np.repeat(acc, 10)), 0, 1))):
        blocks.append(_block(np.repeat(ids, 10), m, v, bin=rel, x=(rel + 0.5) / 15))
    for attack, drop in (("fgsm", 0.3), ("pgd10", 0.5)):
        for e in (0.0, *EPSILONS):  # ε = 0: the attacked images, clean
            blocks.append(_block(ids, "robust_top1", acc * (1 - drop * e * 255 / 4), attack=attack,
                                 epsilon=e))
    kd = done[done["role"] == "student"]
    k_ids, k_acc, k_t = (kd["run_id"].to_numpy(), kd["top1_last"].to_numpy(float),
                         kd["temperature"].to_numpy(float))
    blocks += [_block(k_ids, "agreement", k_acc + 0.1),
               _block(k_ids, "kl_teacher_student", 0.2 / k_t, temperature=k_t),
               _block(k_ids, "logit_corr", 0.9 * k_acc), _block(k_ids, "logit_corr_sample", 0.8 * k_acc)]
    mapped = done[(done["role"] == "teacher") | (done["seed"] == 0)]["run_id"].to_numpy()
    points = len(mapped) * tsne_points
    blocks.append(_block(np.repeat(mapped, tsne_points), "tsne", np.nan, x=rng.normal(size=points),
                         y=rng.normal(size=points), **{"class": rng.integers(0, num_classes, points)}))
    return pd.concat(blocks, ignore_index=True)


def _temperatures(spec) -> tuple[float, ...]:
    t = spec.run.temperature
    return tuple(sorted({1.0, t})) if t is not None else (1.0, 4.0)


def epochs_rows(runs: pd.DataFrame, epochs: int = 3) -> pd.DataFrame:
    done = runs[runs["status"] == "complete"]
    return pd.DataFrame([{"run_id": r, "epoch": e, "lr": 0.05, "train_loss": 1.0 / e,
                          "test_top1": a * e / epochs, "test_loss": 1.0 / e, "seconds": 1.0}
                         for r, a in zip(done["run_id"], done["top1_last"]) for e in range(1, epochs + 1)])


def write_synthetic_tables(study: Study, out: Path, num_classes: int,
                           status: Callable[[RunSpec], str] = lambda spec: "complete") -> Path:
    """runs, epochs and metrics tables of `study` in `out`, as `mixkd run` leaves them, with known values."""
    out.mkdir(parents=True, exist_ok=True)
    runs = build_runs_table(study, summaries(study, status))
    runs.to_parquet(out / "runs.parquet", index=False)
    epochs_rows(runs).to_parquet(out / "epochs.parquet", index=False)
    metrics_rows(study, runs, num_classes).to_parquet(out / "metrics.parquet", index=False)
    return out
