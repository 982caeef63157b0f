"""Big grids in slices: `--only KEY=VALUE[,VALUE...]` picks the runs of a study to train (or list), and the
run folders a study no longer names are found, never dropped.

A researcher with 3,000 runs trains them a teacher, a seed or a loss at a time, on whatever machine is free;
the study's tables still cover every run (those not trained yet read `pending`). A slice takes the teachers
its students need with it, so a student never waits on a teacher outside its slice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from .config import RunSpec
from .errors import MixkdError
from .study import Study


def _distill(attr: str) -> Callable[[RunSpec], str | None]:
    def read(spec: RunSpec) -> str | None:
        d = spec.run.distill
        if d is None:
            return None
        value = getattr(d, attr) if attr != "loss" else d.loss.name
        return f"{value:g}" if isinstance(value, float) else str(value)
    return read


# what `--only` can select on, as the study names it: a run's value of each key (None: the key does not apply)
KEYS: dict[str, Callable[[RunSpec], str | None]] = {
    "role": lambda s: s.role,
    "teacher": lambda s: s.names.name if s.role == "teacher" else s.names.teacher,  # a teacher and its students
    "student": lambda s: s.names.student,
    "mix": lambda s: s.run.mix.name,
    "loss": _distill("loss"),
    "view": _distill("mixed_view"),
    "temperature": _distill("temperature"),
    "seed": lambda s: None if s.run.seed is None else str(s.run.seed),
    "run_id": lambda s: s.run_id,
}


def parse_only(terms: Iterable[str], study: Study) -> dict[str, set[str]]:
    """`["teacher=resnet56", "seed=0,1"]` → {key: values}; a bad term is a one-line error naming what is
    allowed (keys, or the values the study has for that key)."""
    wanted: dict[str, set[str]] = {}
    for term in terms:
        key, sep, values = term.partition("=")
        if not sep or not values:
            raise MixkdError(f"--only {term}: expected KEY=VALUE[,VALUE...], e.g. --only teacher=resnet56")
        if key not in KEYS:
            raise MixkdError(f"--only {term}: unknown key {key!r}; allowed: {', '.join(KEYS)}")
        have = {v for v in map(KEYS[key], study.runs) if v is not None}
        given = [_number(v) if key in ("temperature", "seed") else v for v in values.split(",")]
        for value in given:
            if value not in have:
                raise MixkdError(f"--only {term}: no run of {study.name} has {key} {value!r}; it has "
                                 f"{', '.join(sorted(have)) or 'none'}")
        wanted.setdefault(key, set()).update(given)
    return wanted


def _number(text: str) -> str:
    """A number as the keys write it (`4.0` → `4`), so `temperature=4.0` selects T = 4."""
    try:
        return f"{float(text):g}"
    except ValueError:
        return text


def select(study: Study, wanted: dict[str, set[str]]) -> frozenset[str]:
    """Ids of the runs matching every key (a run a key does not apply to does not match it), and of the
    teachers their students need."""
    chosen = {s.run_id for s in study.runs if all(KEYS[k](s) in values for k, values in wanted.items())}
    needed = {s.run.teacher for s in study.runs if s.run_id in chosen and s.run.teacher}
    return frozenset(chosen | needed)


def orphans(study: Study, out: Path) -> list[str]:
    """Run folders under `out/runs` that the study does not name (an earlier version of it, say): listed so a
    reader sees them, never deleted."""
    folder = Path(out) / "runs"
    named = {s.run_id for s in study.runs}
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in named) if folder.is_dir() else []
