"""Study files: a YAML grid of teacher/student pairs × mix × temperature × mixed view × loss × seed.

`load_study` validates the file; `expand` turns it into fully resolved run configs (every default
filled in), each identified by a short hash of its config, teachers and baselines included.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from . import losses, mixing
from .data import DATASETS, RUNTIME_PARAMS, declared_shape
from .engine import Engine
from .errors import ConfigError, MixkdError
from .models import check_model_args, is_known_model, unknown_model_message
from .schedules import SCHEDULES
from .schema import coerce, from_dict, resolve_component

MixedView = Literal["none", "student", "teacher", "both"]
ROLES = ("teacher", "scratch", "student")  # the order runs are trained in
NO_MIX = {"name": "none", "prob": 1.0}


@dataclass
class Recipe:
    """How one run trains. Defaults are the RepDistiller / MIX-KD CIFAR recipe."""

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Any = "multistep"  # a schedule name or {name: ..., **params}
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    eval_batch_size: int = 500


@dataclass
class TeacherSpec:
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)  # e.g. {patch_size: 4} for a ViT on 32×32
    mix: Any = "none"  # a "Mix-T" teacher is a teacher with `mix: mixup`
    recipe: dict[str, Any] = field(default_factory=dict)  # overrides of the study recipe
    seed: int = 0
    checkpoint: str | None = None  # a RepDistiller/mdistiller checkpoint to use instead of training


@dataclass
class StudentSpec:
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class Pair:
    teacher: str
    student: str


@dataclass
class Grid:
    mix: list[Any] = field(default_factory=lambda: ["none"])
    temperature: list[float] = field(default_factory=lambda: [4.0])
    mixed_view: list[MixedView] = field(default_factory=lambda: ["student"])
    loss: list[Any] = field(default_factory=lambda: ["kd"])
    seeds: list[int] = field(default_factory=lambda: [0])


@dataclass
class Resources:
    """What each Ray task, one lockstep group of runs (see `engine.lockstep`), asks of a Ray cluster. How
    runs are scheduled, not what they compute: kept out of run configs, so changing it changes no run id."""

    # fractions share a GPU, e.g. 0.25: four small runs per GPU; unset: 1 where the cluster has GPUs (and the
    # runs may use them: --device auto or cuda), else 0
    gpus_per_run: float | None = None
    cpus_per_run: float = 1.0


@dataclass
class StudyFile:
    name: str
    dataset: Any
    teachers: dict[str, TeacherSpec]
    students: dict[str, StudentSpec]
    recipe: dict[str, Any] = field(default_factory=dict)
    pairs: list[Pair] | None = None  # default: every teacher with every student
    grid: Grid = field(default_factory=Grid)
    include: list[dict[str, Any]] = field(default_factory=list)
    exclude: list[dict[str, Any]] = field(default_factory=list)
    baselines: bool = True
    output: str | None = None
    description: str = ""
    resources: Resources = field(default_factory=Resources)
    engine: Engine = field(default_factory=Engine)  # how runs compute: also out of run ids


@dataclass
class RunSpec:
    """One run: `config` is what it computes (hashed into `run_id`); `labels` only name things."""

    config: dict
    labels: dict
    run_id: str = ""

    def __post_init__(self):
        self.run_id = run_id(self.config)

    @property
    def role(self) -> str:
        return self.config["role"]


@dataclass
class Study:
    name: str
    source: str
    file: StudyFile
    runs: list[RunSpec]
    dataset: dict
    raw: Any = None  # the study file as read, kept with the tables (`mixkd.study_record`)

    @property
    def output(self) -> Path:
        return Path(self.file.output or Path("out") / self.name)


def run_id(config: dict) -> str:
    """Short stable hash: key order is irrelevant, any changed value gives a new id."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


AXES = ("teacher", "student", "mix", "temperature", "mixed_view", "loss", "seed")


def load_study(path: str | Path) -> Study:
    path = Path(path)
    if not path.is_file():
        raise MixkdError(f"study file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise MixkdError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    try:
        return parse_study(normalise_students(raw), source=str(path))
    except ConfigError as e:
        if e.source is None:
            raise ConfigError(e.path, str(e).split(": ", 1)[1], source=str(path)) from None
        raise


def normalise_students(raw: Any) -> Any:
    """`students: [resnet20, ...]` is shorthand for `{resnet20: {model: resnet20}, ...}`."""
    if isinstance(raw, dict) and isinstance(raw.get("students"), list):
        for i, s in enumerate(raw["students"]):
            if not isinstance(s, (str, dict)):
                raise ConfigError(f"students[{i}]", f"expected a model name or a mapping, got {s!r}")
        raw = dict(raw)
        raw["students"] = {s if isinstance(s, str) else s.get("name", s.get("model")):
                           {"model": s} if isinstance(s, str) else {k: v for k, v in s.items() if k != "name"}
                           for s in raw["students"]}
    return raw


def parse_study(raw: Any, source: str = "<study>") -> Study:
    f: StudyFile = from_dict(StudyFile, normalise_students(raw), "")
    if f.resources.gpus_per_run is not None:
        _positive(f.resources.gpus_per_run, "resources.gpus_per_run", allow_zero=True)
    _positive(f.resources.cpus_per_run, "resources.cpus_per_run")
    dataset = resolve_component(DATASETS, f.dataset, "dataset", skip=1)
    identity = {k: v for k, v in dataset.items() if k not in RUNTIME_PARAMS}  # what the data is, not how it's fetched
    base_recipe = _recipe(f.recipe, "recipe")
    for where, specs in (("teachers", f.teachers), ("students", f.students)):
        if not specs:
            raise ConfigError(where, "needs at least one entry")
        for key, spec in specs.items():
            if not is_known_model(spec.model):
                raise ConfigError(f"{where}.{key}.model", unknown_model_message(spec.model))
            spec.model_args = check_model_args(spec.model, spec.model_args, f"{where}.{key}.model_args",
                                               declared_shape(dataset))
    for key, spec in f.teachers.items():
        _seeds([spec.seed], f"teachers.{key}.seed")
    pairs = f.pairs if f.pairs is not None else [Pair(t, s) for t in f.teachers for s in f.students]
    for i, p in enumerate(pairs):
        _check_pair(p.teacher, p.student, f, f"pairs[{i}]")

    teacher_runs = {name: _teacher_run(name, spec, identity, base_recipe, Path(source))
                    for name, spec in f.teachers.items()}
    axes = _axes(f.grid)
    excludes = [_pattern(e, f"exclude[{i}]") for i, e in enumerate(f.exclude)]
    points = [p for p in map(_unmixed_as_one, _grid_points(pairs, axes))
              if not any(_matches(p, e) for e in excludes)]
    for i, inc in enumerate(f.include):
        points += _include_points(inc, f, pairs, axes, f"include[{i}]")

    runs: list[RunSpec] = list(teacher_runs.values())
    if f.baselines:
        for student, mix, seed in itertools.product(f.students, axes["mix"], axes["seed"]):
            runs.append(_scratch_run(student, f.students[student], mix, seed, identity, base_recipe))
    for p in points:
        runs.append(_student_run(p, f.students[p["student"]], teacher_runs[p["teacher"]], identity, base_recipe))
    unique = {}
    for r in runs:
        unique.setdefault(r.run_id, r)
    ordered = sorted(unique.values(), key=lambda r: ROLES.index(r.role))  # stable: teachers first
    return Study(f.name, source, f, ordered, dataset, raw)


def _check_pair(teacher: str, student: str, f: StudyFile, path: str) -> None:
    for role, name, known in (("teacher", teacher, f.teachers), ("student", student, f.students)):
        if name not in known:
            raise ConfigError(f"{path}.{role}", f"{name!r} is not defined; defined: {', '.join(known)}")


def _positive(value: float, path: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(path, f"must be {'≥' if allow_zero else '>'} 0, got {value!r}")


def _recipe(overrides: dict, path: str, base: dict | None = None) -> dict:
    merged = {**(base or {}), **overrides}
    recipe = dataclasses.asdict(from_dict(Recipe, merged, path))
    for key in ("epochs", "batch_size", "lr", "eval_batch_size"):
        _positive(recipe[key], f"{path}.{key}")
    for key in ("momentum", "weight_decay", "warmup_epochs"):
        _positive(recipe[key], f"{path}.{key}", allow_zero=True)
    if not 0 <= recipe["label_smoothing"] < 1:
        raise ConfigError(f"{path}.label_smoothing", f"must be in [0, 1), got {recipe['label_smoothing']!r}")
    recipe["schedule"] = resolve_component(SCHEDULES, recipe["schedule"], f"{path}.schedule", skip=2)
    return recipe


def _mix(spec: Any, path: str) -> dict:
    mix = resolve_component(mixing.MIXERS, spec, path, skip=3, extra={"prob": 1.0})
    if not 0 <= mix["prob"] <= 1:
        raise ConfigError(f"{path}.prob", f"must be in [0, 1], got {mix['prob']!r}")
    _try_mixer(mix, path)
    return mix


def _try_mixer(mix: dict, path: str) -> None:
    """Mix a dummy batch once, so parameters the mixer cannot use fail when the study is read, not hours
    into a run (their ranges are the mixer's own business, as a model's arguments are the model's)."""
    name, params = mix["name"], {k: v for k, v in mix.items() if k not in ("name", "prob")}
    try:
        mixing.MIXERS.get(name)(torch.zeros(8, 3, 8, 8), torch.arange(8), np.random.default_rng(0), **params)
    except Exception as e:  # noqa: BLE001 - whatever the mixer raises, it is about these parameters
        raise ConfigError(path, f"mixer {name!r} rejects its parameters: {type(e).__name__}: {e}") from None


def _loss(spec: Any, path: str) -> dict:
    return resolve_component(losses.LOSSES, spec, path, skip=1)  # skip the temperature: its own axis


def _temperatures(values: list, path: str) -> list[float]:
    temps = coerce(values, list[float], path)
    for i, t in enumerate(temps):
        _positive(t, f"{path}[{i}]")
    return temps


def _axes(grid: Grid) -> dict[str, list]:
    for axis in ("mix", "temperature", "mixed_view", "loss", "seeds"):
        if not getattr(grid, axis):
            raise ConfigError(f"grid.{axis}", "needs at least one value")
    return {"mix": [_mix(m, f"grid.mix[{i}]") for i, m in enumerate(grid.mix)],
            "temperature": _temperatures(grid.temperature, "grid.temperature"),
            "mixed_view": grid.mixed_view,
            "loss": [_loss(l, f"grid.loss[{i}]") for i, l in enumerate(grid.loss)],
            "seed": _seeds(grid.seeds, "grid.seeds")}


def _seeds(values: Any, path: str) -> list[int]:
    values = coerce(values, list[int], path)
    for i, seed in enumerate(values):
        if seed < 0:
            raise ConfigError(f"{path}[{i}]", f"must be ≥ 0 (NumPy seeds are), got {seed}")
    return values


KEYS = ("mix", "temperature", "mixed_view", "loss", "seed")


def _grid_points(pairs: list[Pair], axes: dict[str, list]) -> list[dict]:
    return [{"teacher": p.teacher, "student": p.student, **dict(zip(KEYS, values))}
            for p in pairs for values in itertools.product(*(axes[k] for k in KEYS))]


def _unmixed_as_one(point: dict) -> dict:
    """Nothing is mixed when the mix is `none` or no one sees it: one run, whatever the other axis said."""
    if point["mix"]["name"] == "none" or point["mixed_view"] == "none":
        return {**point, "mix": copy.deepcopy(NO_MIX), "mixed_view": "none"}
    return point


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def _partial(resolve, spec: Any, path: str) -> dict:
    """A mix/loss pattern: validated and coerced like the grid's, keeping only the keys it names."""
    full = resolve(spec, path)
    return {k: full[k] for k in (spec if isinstance(spec, dict) else {"name": spec})}


def _pattern(entry: dict, path: str) -> dict[str, list]:
    """An include/exclude entry with each axis validated and coerced: axis → allowed values."""
    pattern = {}
    for key, values in entry.items():
        axis, sub = ("seed" if key == "seeds" else key), f"{path}.{key}"
        if axis not in AXES:
            raise ConfigError(sub, f"unknown axis; allowed: {', '.join(AXES)}")
        values = _as_list(values)
        if axis == "mix":
            values = [_partial(_mix, v, sub) for v in values]
        elif axis == "loss":
            values = [_partial(_loss, v, sub) for v in values]
        elif axis == "temperature":
            values = _temperatures(values, sub)
        elif axis == "mixed_view":
            values = coerce(values, list[MixedView], sub)
        elif axis == "seed":
            values = _seeds(values, sub)
        pattern[axis] = values
    return pattern


def _matches(point: dict, pattern: dict[str, list]) -> bool:
    """A point matches when, for every axis of the pattern, its value is one of the pattern's values;
    a mix or loss pattern matches every variant with the name and parameters it gives."""
    def one(value, wanted) -> bool:
        return all(value.get(k) == v for k, v in wanted.items()) if isinstance(wanted, dict) else value == wanted

    return all(any(one(point[axis], w) for w in wanted) for axis, wanted in pattern.items())


def _include_points(inc: dict, f: StudyFile, pairs: list[Pair], axes: dict[str, list], path: str) -> list[dict]:
    """An include entry fixes some axes (one value or a list); the others span the whole grid."""
    fixed = _pattern(inc, path)
    for axis in ("mix", "loss"):  # an included variant is fully resolved, not a pattern
        if axis in inc:
            fixed[axis] = [(_mix if axis == "mix" else _loss)(v, f"{path}.{axis}") for v in _as_list(inc[axis])]
    for role, known in (("teacher", f.teachers), ("student", f.students)):
        for name in fixed.get(role, []):
            if name not in known:
                raise ConfigError(f"{path}.{role}", f"{name!r} is not defined; defined: {', '.join(known)}")
    pair_list = [p for p in pairs if p.teacher in fixed.get("teacher", [p.teacher])
                 and p.student in fixed.get("student", [p.student])]
    if "teacher" in fixed and "student" in fixed and not pair_list:
        pair_list = [Pair(t, s) for t in fixed["teacher"] for s in fixed["student"]]
    return [_unmixed_as_one({"teacher": p.teacher, "student": p.student, **dict(zip(KEYS, values))})
            for p in pair_list for values in itertools.product(*(fixed.get(k, axes[k]) for k in KEYS))]


def _teacher_run(name: str, spec: TeacherSpec, dataset: dict, base_recipe: dict, source: Path) -> RunSpec:
    config = {"role": "teacher", "model": spec.model, "model_args": spec.model_args, "dataset": dataset,
              "recipe": _recipe(spec.recipe, f"teachers.{name}.recipe", base_recipe),
              "mix": _mix(spec.mix, f"teachers.{name}.mix"), "distill": None, "seed": spec.seed}
    labels = {"name": name, "teacher": None, "student": None}
    if spec.checkpoint:
        for key, unused in (("mix", spec.mix != "none"), ("recipe", bool(spec.recipe)), ("seed", spec.seed != 0)):
            if unused:
                raise ConfigError(f"teachers.{name}.{key}", "has no effect on a teacher given as a checkpoint; remove it")
        # Identified by the file's content, not its path or a recipe it was never trained with.
        path = (source.parent / spec.checkpoint).resolve() if not Path(spec.checkpoint).is_absolute() \
            else Path(spec.checkpoint)
        config.update(recipe=None, mix=copy.deepcopy(NO_MIX), seed=None,
                      checkpoint_sha256=_sha256(path, f"teachers.{name}.checkpoint"))
        labels["checkpoint"] = str(path)
    return RunSpec(config, labels)


def _sha256(path: Path, field_path: str) -> str:
    if not path.is_file():
        raise ConfigError(field_path, f"checkpoint file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scratch_run(name: str, spec: StudentSpec, mix: dict, seed: int, dataset: dict, base_recipe: dict) -> RunSpec:
    config = {"role": "scratch", "model": spec.model, "model_args": spec.model_args, "dataset": dataset,
              "recipe": _recipe(spec.recipe, f"students.{name}.recipe", base_recipe),
              "mix": mix, "distill": None, "seed": seed}
    return RunSpec(config, {"name": name, "teacher": None, "student": name})



def _student_run(p: dict, spec: StudentSpec, teacher: RunSpec, dataset: dict, base_recipe: dict) -> RunSpec:
    mix, view = p["mix"], p["mixed_view"]
    config = {"role": "student", "model": spec.model, "model_args": spec.model_args, "dataset": dataset,
              "recipe": _recipe(spec.recipe, f"students.{p['student']}.recipe", base_recipe),
              "mix": mix, "seed": p["seed"],
              "distill": {"teacher": teacher.run_id, "temperature": float(p["temperature"]),
                          "mixed_view": view, "loss": p["loss"]}}
    return RunSpec(config, {"name": p["student"], "teacher": p["teacher"], "student": p["student"]})
