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
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from . import losses, mixing
from .data import DATASETS, RUNTIME_PARAMS, declared_shape, training_images
from .distill import VIEWS
from .engine import Engine
from .errors import ConfigError, MixkdError, StudyWarning
from .models import check_model_args, is_known_model, meta_model, unknown_model_message
from .models.checkpoint import teacher_state
from .schedules import SCHEDULES
from .schema import Kind, coerce, from_dict

MixedView = Literal["none", "student", "teacher", "both"]
# The components a study names, by the name `mixkd list` gives their kind; the temperature a loss is given
# is an axis of its own, a schedule's (t, epochs) come from the run
KINDS = {"datasets": Kind(DATASETS, skip=1), "mixers": Kind(mixing.MIXERS, skip=3, extra={"prob": 1.0}),
         "losses": Kind(losses.LOSSES, skip=1), "schedules": Kind(SCHEDULES, skip=2)}
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
        raw = _read_yaml(path.read_text())
        return parse_study(normalise_students(raw), source=str(path))
    except yaml.YAMLError as e:
        raise MixkdError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    except ConfigError as e:
        if e.source is None:
            raise ConfigError(e.path, str(e).split(": ", 1)[1], source=str(path)) from None
        raise


_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's when PyYAML has it: 5× faster


def _read_yaml(text: str) -> Any:
    """The YAML document, refusing a mapping that repeats a key: PyYAML would keep the last one silently."""
    loader = _YAML_LOADER(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _no_repeated_keys(node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _no_repeated_keys(node: yaml.Node, path: str, seen: set[int]) -> None:
    if id(node) in seen:  # an alias of a node already walked
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            sub = f"{path}.{key.value}" if path else str(key.value)
            if key.value in lines and key.tag != "tag:yaml.org,2002:merge":
                raise ConfigError(sub, f"repeated (lines {lines[key.value]} and {key.start_mark.line + 1}); YAML "
                                       f"would keep the last silently: remove one")
            lines[key.value] = key.start_mark.line + 1
            _no_repeated_keys(value, sub, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _no_repeated_keys(item, f"{path}[{i}]", seen)


def normalise_students(raw: Any) -> Any:
    """`students: [resnet20, ...]` is shorthand for `{resnet20: {model: resnet20}, ...}`; each entry's name (its
    `name`, else its model) must be its own, as the mapping's keys are."""
    if not isinstance(raw, dict) or not isinstance(raw.get("students"), list):
        return raw
    students, index = {}, {}
    for i, s in enumerate(raw["students"]):
        entry = {"model": s} if isinstance(s, str) else s
        if not isinstance(entry, dict):
            raise ConfigError(f"students[{i}]", f"expected a model name or a mapping, got {s!r}")
        key = "name" if "name" in entry else "model"
        name = entry.get(key)
        if not isinstance(name, str):
            raise ConfigError(f"students[{i}].{key}", f"expected a name, got {name!r}")
        if name in index:
            raise ConfigError(f"students[{i}]", f"{name!r} already names students[{index[name]}]: give each "
                                                f"student its own `name`")
        index[name], students[name] = i, {k: v for k, v in entry.items() if k != "name"}
    return {**raw, "students": students}


def parse_study(raw: Any, source: str = "<study>") -> Study:
    f: StudyFile = from_dict(StudyFile, normalise_students(raw), "")
    _label(f.name, "name")
    if f.resources.gpus_per_run is not None:
        _positive(f.resources.gpus_per_run, "resources.gpus_per_run", allow_zero=True)
    _positive(f.resources.cpus_per_run, "resources.cpus_per_run")
    dataset = KINDS["datasets"].resolve(f.dataset, "dataset")
    images = training_images(dataset, "dataset")
    identity = {k: v for k, v in dataset.items() if k not in RUNTIME_PARAMS}  # what the data is, not how it's fetched
    base_recipe = _recipe(f.recipe, "recipe", images=images)
    recipes = {}  # (teachers|students, name) → its recipe
    for where, specs in (("teachers", f.teachers), ("students", f.students)):
        if not specs:
            raise ConfigError(where, "needs at least one entry")
        for key, spec in specs.items():
            if not is_known_model(spec.model):
                raise ConfigError(f"{where}.{key}.model", unknown_model_message(spec.model))
            spec.model_args = check_model_args(spec.model, spec.model_args, f"{where}.{key}.model_args",
                                               declared_shape(dataset))
            recipes[where, key] = _recipe(spec.recipe, f"{where}.{key}.recipe", base_recipe, images)
    for key, spec in f.teachers.items():
        _seeds([spec.seed], f"teachers.{key}.seed")
    pairs = f.pairs if f.pairs is not None else [Pair(t, s) for t in f.teachers for s in f.students]
    for i, p in enumerate(pairs):
        _check_pair(p.teacher, p.student, f, f"pairs[{i}]")

    teacher_runs = {name: _teacher_run(name, spec, identity, recipes["teachers", name], Path(source))
                    for name, spec in f.teachers.items()}
    axes = _axes(f.grid)
    points = list(map(_unmixed_as_one, _grid_points(pairs, axes)))
    for i, entry in enumerate(f.exclude):
        excluded = _pattern(entry, f"exclude[{i}]", f)
        kept = [p for p in points if not _matches(p, excluded)]
        if len(kept) == len(points):
            warnings.warn(f"{source}: exclude[{i}] matches no point of the grid", StudyWarning, stacklevel=2)
        points = kept
    for i, inc in enumerate(f.include):
        points += _include_points(inc, f, pairs, axes, f"include[{i}]")

    runs: list[RunSpec] = list(teacher_runs.values())
    if f.baselines:
        for student, mix, seed in itertools.product(f.students, axes["mix"], axes["seed"]):
            runs.append(_scratch_run(student, f.students[student], mix, seed, identity, recipes["students", student]))
    for p in points:
        runs.append(_student_run(p, f.students[p["student"]], teacher_runs[p["teacher"]], identity,
                                 recipes["students", p["student"]]))
    unique = {}
    for r in runs:
        unique.setdefault(r.run_id, r)
    ordered = sorted(unique.values(), key=lambda r: ROLES.index(r.role))  # stable: teachers first
    _check_mixes_fit(ordered, f, declared_shape(dataset))
    _warn_of_repeats(ordered, source)
    return Study(f.name, source, f, ordered, dataset, raw)


def _check_mixes_fit(runs: list[RunSpec], f: StudyFile, shape: tuple[int, int, int]) -> None:
    """Fail when the study is read, not in every run, on a mix that a model it is applied to cannot take
    (TransMix needs the student's class-token attention, manifold mixup the stages it mixes in front of)."""
    models, checked = {}, set()
    for r in runs:
        mix = r.config["mix"]
        if mix["name"] not in mixing.MODEL_NEEDS:
            continue
        for where, name, relabels in _mixed_models(r):
            spec = (f.teachers if where == "teachers" else f.students)[name]
            model = (spec.model, json.dumps(spec.model_args, sort_keys=True))
            if (*model, json.dumps(mix, sort_keys=True), relabels) in checked:
                continue
            checked.add((*model, json.dumps(mix, sort_keys=True), relabels))
            if model not in models:
                models[model] = meta_model(spec.model, spec.model_args, shape)
            params = {k: v for k, v in mix.items() if k not in ("name", "prob")}
            try:
                mixing.MODEL_NEEDS.get(mix["name"])(models[model], relabels, **params)
            except (ValueError, MixkdError) as e:
                raise ConfigError(f"{where}.{name}.model", f"{spec.model} cannot take mix {mix['name']!r}: {e}") \
                    from None


def _mixed_models(r: RunSpec) -> list[tuple[str, str, bool]]:
    """(teachers|students, name, relabels) of each model run `r` applies its mix to: the model it trains when
    that sees the mixed batch (the mix's labels may come from its forward), and a teacher that sees it."""
    distill = r.config["distill"]
    view = VIEWS[distill["mixed_view"] if distill else "student"]
    mixed = [("teachers" if r.role == "teacher" else "students", r.labels["name"], True)] if view.student_mixed else []
    return mixed + ([("teachers", r.labels["teacher"], False)] if distill and view.teacher_mixed else [])


def _computation(config: dict) -> dict:
    """What a run computes, whatever it is called: a teacher trains as a scratch run does; a student whose loss
    reads no teacher (ce) is a scratch run, with the mix only if it sees the mixed batch; TransMix where the
    student sees clean images relabels nothing, so it is CutMix."""
    c, d = {**config, "role": None}, config["distill"]
    if d is None:
        return c
    view = VIEWS[d["mixed_view"]]
    if not losses.LOSSES.get(d["loss"]["name"]).uses_teacher:
        return {**c, "distill": None, "mix": c["mix"] if view.student_mixed else NO_MIX}
    if c["mix"]["name"] == "transmix" and not view.student_mixed:
        return {**c, "mix": {**c["mix"], "name": "cutmix"}}
    return c


def _warn_of_repeats(runs: list[RunSpec], source: str) -> None:
    """Runs that compute exactly what another run of the study computes would train twice under two labels."""
    first: dict[str, RunSpec] = {}
    repeats = []
    for r in runs:
        key = json.dumps(_computation(r.config), sort_keys=True)
        if key in first:
            repeats.append(f"{_name(r)} = {_name(first[key])}")
        first.setdefault(key, r)
    if repeats:
        more = f" and {len(repeats) - 2} more" if len(repeats) > 2 else ""
        warnings.warn(f"{source}: {len(repeats)} run{'s' * (len(repeats) > 1)} would train what another run "
                      f"trains, so each such pair twice: {'; '.join(repeats[:2])}{more}", StudyWarning, stacklevel=3)


def _name(r: RunSpec) -> str:
    c, d = r.config, r.config["distill"]
    where = f"{r.labels['teacher']}→" if d else ""
    details = f", T {d['temperature']:g}, view {d['mixed_view']}, loss {d['loss']['name']}" if d else ""
    return f"{r.role} {where}{r.labels['name']} (mix {c['mix']['name']}{details}, seed {c['seed']})"


LABEL = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


def _label(name: str, path: str) -> None:
    """A study's name labels its results; where they go is `output:`'s or --out's to say."""
    if not LABEL.fullmatch(name) or ".." in name:
        raise ConfigError(path, f"{name!r} is a label, not a path: letters, digits, _, - and . (not first, no ..); "
                                f"say where results go with `output:` or --out")


def _check_pair(teacher: str, student: str, f: StudyFile, path: str) -> None:
    for role, name, known in (("teacher", teacher, f.teachers), ("student", student, f.students)):
        if name not in known:
            raise ConfigError(f"{path}.{role}", f"{name!r} is not defined; defined: {', '.join(known)}")


def _positive(value: float, path: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(path, f"must be {'≥' if allow_zero else '>'} 0, got {value!r}")


def _recipe(overrides: dict, path: str, base: dict | None = None, images: int | None = None) -> dict:
    """The recipe `overrides` make of `base`, checked; `images`: how many the dataset trains on, if known."""
    merged = {**(base or {}), **overrides}
    recipe = dataclasses.asdict(from_dict(Recipe, merged, path))
    for key in ("epochs", "batch_size", "lr", "eval_batch_size"):
        _positive(recipe[key], f"{path}.{key}")
    if images is not None and recipe["batch_size"] > images:
        raise ConfigError(f"{path}.batch_size", f"must be at most the {images} images the dataset trains on, "
                                                f"got {recipe['batch_size']}")
    for key in ("momentum", "weight_decay", "warmup_epochs"):
        _positive(recipe[key], f"{path}.{key}", allow_zero=True)
    if not 0 <= recipe["label_smoothing"] < 1:
        raise ConfigError(f"{path}.label_smoothing", f"must be in [0, 1), got {recipe['label_smoothing']!r}")
    recipe["schedule"] = KINDS["schedules"].resolve(recipe["schedule"], f"{path}.schedule")
    return recipe


def _mix(spec: Any, path: str) -> dict:
    mix = KINDS["mixers"].resolve(spec, path)
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
    loss = KINDS["losses"].resolve(spec, path)
    name, params = loss["name"], {k: v for k, v in loss.items() if k != "name"}
    try:
        losses.LOSSES.get(name)(**params)  # its parameters' ranges are the loss's own business
    except Exception as e:  # noqa: BLE001 - whatever it raises, it is about these parameters
        raise ConfigError(path, f"loss {name!r} rejects its parameters: {type(e).__name__}: {e}") from None
    return loss


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


def _pattern(entry: dict, path: str, f: StudyFile) -> dict[str, list]:
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
        for role, known in (("teacher", f.teachers), ("student", f.students)):
            if axis == role and (unknown := [v for v in values if v not in known]):
                raise ConfigError(sub, f"{unknown[0]!r} is not defined; defined: {', '.join(known)}")
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
    fixed = _pattern(inc, path, f)
    for axis in ("mix", "loss"):  # an included variant is fully resolved, not a pattern
        if axis in inc:
            fixed[axis] = [(_mix if axis == "mix" else _loss)(v, f"{path}.{axis}") for v in _as_list(inc[axis])]
    pair_list = [p for p in pairs if p.teacher in fixed.get("teacher", [p.teacher])
                 and p.student in fixed.get("student", [p.student])]
    if "teacher" in fixed and "student" in fixed and not pair_list:
        pair_list = [Pair(t, s) for t in fixed["teacher"] for s in fixed["student"]]
    return [_unmixed_as_one({"teacher": p.teacher, "student": p.student, **dict(zip(KEYS, values))})
            for p in pair_list for values in itertools.product(*(fixed.get(k, axes[k]) for k in KEYS))]


def _teacher_run(name: str, spec: TeacherSpec, dataset: dict, recipe: dict, source: Path) -> RunSpec:
    config = {"role": "teacher", "model": spec.model, "model_args": spec.model_args, "dataset": dataset,
              "recipe": recipe, "mix": _mix(spec.mix, f"teachers.{name}.mix"), "distill": None, "seed": spec.seed}
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
        _check_fits(spec, path, dataset, f"teachers.{name}.checkpoint")
    return RunSpec(config, labels)


def _check_fits(spec: TeacherSpec, path: Path, dataset: dict, field_path: str) -> None:
    """Load a checkpoint teacher into its architecture, built on the meta device, where the dataset declares
    its shape (the run loads it again with the data's)."""
    if hasattr(DATASETS.get(dataset["name"]), "shape"):
        try:
            teacher_state(meta_model(spec.model, spec.model_args, declared_shape(dataset)), path)
        except MixkdError as e:
            raise ConfigError(field_path, str(e)) from None


def _sha256(path: Path, field_path: str) -> str:
    if not path.is_file():
        raise ConfigError(field_path, f"checkpoint file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scratch_run(name: str, spec: StudentSpec, mix: dict, seed: int, dataset: dict, recipe: dict) -> RunSpec:
    config = {"role": "scratch", "model": spec.model, "model_args": spec.model_args, "dataset": dataset,
              "recipe": recipe, "mix": mix, "distill": None, "seed": seed}
    return RunSpec(config, {"name": name, "teacher": None, "student": name})



def _student_run(p: dict, spec: StudentSpec, teacher: RunSpec, dataset: dict, recipe: dict) -> RunSpec:
    mix, view = p["mix"], p["mixed_view"]
    config = {"role": "student", "model": spec.model, "model_args": spec.model_args, "dataset": dataset,
              "recipe": recipe, "mix": mix, "seed": p["seed"],
              "distill": {"teacher": teacher.run_id, "temperature": float(p["temperature"]),
                          "mixed_view": view, "loss": p["loss"]}}
    return RunSpec(config, {"name": p["student"], "teacher": p["teacher"], "student": p["student"]})
