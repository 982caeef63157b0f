"""The resolved study stored beside its tables (`study.json`), so an output folder knows its study.

`mixkd report --out X` then needs no study file, and a study file whose runs are not X's is caught instead
of silently rewriting X's tables with another study's runs. The record holds every run's resolved config:
rebuilding the study from it reads no checkpoint, dataset or model.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import Component, RunSpec
from .errors import MixkdError
from .rundir import atomic_write
from .schema import from_dict
from .study import Study, StudyFile, normalise_students

RECORD = "study.json"
FORMAT = 1


def write_record(study: Study, out: Path) -> None:
    """Store `study` (and the file it was read from) in its output folder."""
    record = {"format": FORMAT, "name": study.name, "source": study.source, "study_file": study.raw,
              "dataset": study.dataset.as_dict(),
              "runs": [{"run_id": r.run_id, "config": r.config, "labels": r.labels} for r in study.runs]}
    atomic_write(Path(out) / RECORD, json.dumps(record, indent=1, sort_keys=True, default=str))


def has_record(out: Path) -> bool:
    return (Path(out) / RECORD).is_file()


def read_record(out: Path) -> Study:
    """The study stored in `out`, as `mixkd run` resolved it."""
    path = Path(out) / RECORD
    try:
        record = json.loads(path.read_text())
        runs = [RunSpec.from_dicts(r["config"], r["labels"]) for r in record["runs"]]
        dataset = Component.from_dict(record["dataset"])
        file = from_dict(StudyFile, normalise_students(record["study_file"]), "")
    except (OSError, ValueError, KeyError, TypeError, MixkdError) as e:
        raise MixkdError(f"{path}: not a study record mixkd can read ({type(e).__name__}: {e}); rerun "
                         f"`mixkd run STUDY --out {out}` to rewrite it") from None
    for spec, stored in zip(runs, record["runs"]):
        if spec.run_id != stored["run_id"]:
            raise MixkdError(f"{path}: run {stored['run_id']}'s config hashes to {spec.run_id} "
                             f"(the file was edited); rerun `mixkd run STUDY --out {out}` to rewrite it")
    return Study(record["name"], record["source"], file, runs, dataset, record["study_file"])


def check_same_study(study: Study, out: Path, command: str) -> None:
    """Refuse a study that is not the one `out` holds. To run, it must share runs with it (an edited or
    renamed study trains what is new; another study belongs in another folder); to report or list, it must
    have exactly its runs (else the tables would describe runs `out` never trained)."""
    if not has_record(out):
        return
    stored = read_record(out)
    mine, theirs = {r.run_id for r in study.runs}, {r.run_id for r in stored.runs}
    held = f"{out} holds study {stored.name!r} ({len(theirs)} runs)"
    if command == "run" and theirs and not mine & theirs:
        raise MixkdError(f"{held}, none of them a run of {study.source}: give another --out, or leave out "
                         f"STUDY to resume the one stored there")
    if command != "run" and mine != theirs:
        raise MixkdError(f"{held}, but {study.source} resolves to {len(mine)} runs: {len(mine - theirs)} of "
                         f"them not there, {len(theirs - mine)} of its runs not in the study; `mixkd run` "
                         f"the study to update it, or leave out STUDY to {command} what is there")
