"""Study files: a YAML grid of teacher/student pairs × mix × temperature × mixed view × loss × seed.

`load_study` reads and validates the file and expands its grid into typed runs (`mixkd.config`): every
default filled in, teachers and baselines included, each identified by a short hash of its config. The
checks that build a study's components (models on the meta device, a dummy mix) are `mixkd.study_checks`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import (DEFAULT_SCHEDULE, NO_MIX, ROLES, SGD, Component, Distill, Labels, Mix, MixedView,
                     Params, Recipe, RunConfig, RunSpec)
from .data import DATASETS, declared_shape, runtime_params
from .data.randaugment import RandAugment
from .engine import Engine
from .errors import ConfigError, MixkdError, StudyWarning
from .losses import LOSSES
from .mixing import MIXERS
from .models import is_known_model, unknown_model_message
from .optimizers import OPTIMIZERS, try_optimizer
from .schedules import SCHEDULES
from .schema import coerce, from_dict, resolve_component
from .study_checks import (check_fits, check_methods_fit, check_mixes_fit, check_model_args, training_images,
                           try_loss, try_mixer, warn_of_repeats)
from .trackers import TRACKERS
from .trackers import resolve as resolve_trackers

# The components a study names, by the name `mixkd list` gives their kind
COMPONENTS = {"datasets": DATASETS, "mixers": MIXERS, "losses": LOSSES, "schedules": SCHEDULES,
              "optimizers": OPTIMIZERS, "trackers": TRACKERS}


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
    track: list[Any] = field(default_factory=list)  # experiment trackers (`mixkd.trackers`): out of ids too


@dataclass
class Study:
    name: str
    source: str
    file: StudyFile
    runs: list[RunSpec]
    dataset: Component  # as the study gives it, how it is fetched included
    raw: Any = None  # the study file as read, kept with the tables (`mixkd.study_record`)

    @property
    def output(self) -> Path:
        return Path(self.file.output or Path("out") / self.name)


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
    for key in ("lockstep", "cpu_threads"):
        if getattr(f.engine, key) < 1:
            raise ConfigError(f"engine.{key}", f"must be ≥ 1, got {getattr(f.engine, key)!r}")
    f.track = resolve_trackers(f.track)
    spec = resolve_component(DATASETS, f.dataset, "dataset")
    images = training_images(spec, "dataset")
    dataset = Component.from_dict(spec)
    # what the data is, not how it is fetched
    identity = Component.from_dict({k: v for k, v in spec.items() if k not in runtime_params(spec)})
    shape = declared_shape(spec)
    base_recipe = _recipe(f.recipe, "recipe", images=images)
    recipes = {}  # (teachers|students, name) → its recipe
    for where, specs in (("teachers", f.teachers), ("students", f.students)):
        if not specs:
            raise ConfigError(where, "needs at least one entry")
        for key, entry in specs.items():
            if not is_known_model(entry.model):
                raise ConfigError(f"{where}.{key}.model", unknown_model_message(entry.model))
            entry.model_args = check_model_args(entry.model, entry.model_args, f"{where}.{key}.model_args",
                                                shape)
            recipes[where, key] = _recipe(entry.recipe, f"{where}.{key}.recipe", base_recipe, images)
    for key, teacher in f.teachers.items():
        _seeds([teacher.seed], f"teachers.{key}.seed")
    pairs = f.pairs if f.pairs is not None else [Pair(t, s) for t in f.teachers for s in f.students]
    for i, p in enumerate(pairs):
        _check_pair(p.teacher, p.student, f, f"pairs[{i}]")

    teacher_runs = {name: _teacher_run(name, t, identity, recipes["teachers", name], Path(source), shape)
                    for name, t in f.teachers.items()}
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
    check_mixes_fit(ordered, f.teachers, f.students, shape)
    check_methods_fit(ordered, f.teachers, f.students, shape)
    warn_of_repeats(ordered, source)
    return Study(f.name, source, f, ordered, dataset, raw)


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


def _recipe(overrides: dict, path: str, base: Recipe | None = None, images: int | None = None) -> Recipe:
    """The recipe `overrides` make of `base` (else of the default recipe), checked; `images`: how many the
    dataset trains on, if known."""
    merged = {**(base.as_dict() if base else {}), **overrides}
    schedule = resolve_component(SCHEDULES, merged.pop("schedule", DEFAULT_SCHEDULE), f"{path}.schedule")
    optimizer = resolve_component(OPTIMIZERS, merged.pop("optimizer", SGD.name), f"{path}.optimizer")
    recipe = from_dict(Recipe, {**merged, "schedule": Component.from_dict(schedule),
                                "optimizer": Component.from_dict(optimizer)}, path)
    for key in ("epochs", "batch_size", "lr", "eval_batch_size"):
        _positive(getattr(recipe, key), f"{path}.{key}")
    if images is not None and recipe.batch_size > images:
        raise ConfigError(f"{path}.batch_size", f"must be at most the {images} images the dataset trains on, "
                                                f"got {recipe.batch_size}")
    try:  # a schedule's parameters that cannot work (timm's `sched: plateau`) fail here, not at the first step
        SCHEDULES.get(recipe.schedule.name)(0.0, recipe.epochs, **recipe.schedule.kwargs())
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}.schedule", str(e)) from None
    try:  # likewise an optimizer's (betas of one number): built once over a dummy parameter
        try_optimizer(recipe)
    except (ValueError, TypeError, IndexError) as e:
        raise ConfigError(f"{path}.optimizer", f"{recipe.optimizer.name} cannot be built with "
                                               f"{recipe.optimizer.kwargs()}: {e}") from None
    if recipe.clip_grad is not None:
        _positive(recipe.clip_grad, f"{path}.clip_grad")
    _positive(recipe.devices, f"{path}.devices")
    if recipe.batch_size % recipe.devices:
        raise ConfigError(f"{path}.batch_size", f"is the global batch, split evenly over the {recipe.devices} "
                                                f"devices: make it a multiple of {recipe.devices}, got "
                                                f"{recipe.batch_size}")
    if images is not None and 0 < images % recipe.batch_size < recipe.devices:
        raise ConfigError(f"{path}.batch_size", f"leaves an epoch's last batch {images % recipe.batch_size} of "
                                                f"the {images} images, too few for one on each of "
                                                f"{recipe.devices} devices: pick another batch size")
    if recipe.sync_bn and recipe.devices == 1:
        raise ConfigError(f"{path}.sync_bn", "shares BatchNorm statistics between devices: it needs devices > 1")
    if recipe.augment is not None:
        try:
            RandAugment.parse(recipe.augment)
        except MixkdError as e:
            raise ConfigError(f"{path}.augment", str(e)) from None
    if recipe.random_erasing is not None and not 0 < recipe.random_erasing <= 1:
        raise ConfigError(f"{path}.random_erasing", f"must be in (0, 1], e.g. DeiT's 0.25, got "
                                                    f"{recipe.random_erasing!r}")
    if recipe.repeated_augment is not None and recipe.repeated_augment < 2:
        raise ConfigError(f"{path}.repeated_augment", f"must be ≥ 2, e.g. DeiT's 3 (leave it out for no "
                                                      f"repetition), got {recipe.repeated_augment!r}")
    if recipe.ema_decay is not None and not 0 < recipe.ema_decay < 1:
        raise ConfigError(f"{path}.ema_decay", f"must be in (0, 1), e.g. DeiT's 0.99996, got "
                                               f"{recipe.ema_decay!r}")
    for key in ("momentum", "weight_decay", "warmup_epochs"):
        _positive(getattr(recipe, key), f"{path}.{key}", allow_zero=True)
    if not 0 <= recipe.label_smoothing < 1:
        raise ConfigError(f"{path}.label_smoothing", f"must be in [0, 1), got {recipe.label_smoothing!r}")
    return recipe


def _mix(spec: Any, path: str) -> Mix:
    mix = resolve_component(MIXERS, spec, path)
    if not 0 <= mix["prob"] <= 1:
        raise ConfigError(f"{path}.prob", f"must be in [0, 1], got {mix['prob']!r}")
    mix = Mix.from_dict(mix)
    try_mixer(mix, path)
    return mix


def _loss(spec: Any, path: str) -> Component:
    loss = Component.from_dict(resolve_component(LOSSES, spec, path))
    try_loss(loss, path)
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
    if point["mix"].name == "none" or point["mixed_view"] == "none":
        return {**point, "mix": NO_MIX, "mixed_view": "none"}
    return point


def _as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def _partial(resolve, spec: Any, path: str) -> dict:
    """A mix/loss pattern: validated and coerced like the grid's, keeping only the keys it names."""
    full = resolve(spec, path).as_dict()
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
        if isinstance(wanted, dict):
            value = value.as_dict()
            return all(value.get(k) == v for k, v in wanted.items())
        return value == wanted

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


def _teacher_run(name: str, spec: TeacherSpec, dataset: Component, recipe: Recipe, source: Path,
                 shape: tuple[int, int, int]) -> RunSpec:
    mix = _mix(spec.mix, f"teachers.{name}.mix")
    if not spec.checkpoint:
        run = RunConfig("teacher", spec.model, Params(spec.model_args), dataset, recipe, mix, None, spec.seed)
        return RunSpec(run, Labels(name))
    for key, unused in (("mix", spec.mix != "none"), ("recipe", bool(spec.recipe)), ("seed", spec.seed != 0)):
        if unused:
            raise ConfigError(f"teachers.{name}.{key}",
                              "has no effect on a teacher given as a checkpoint; remove it")
    # Identified by the file's content, not its path or a recipe it was never trained with.
    path = (source.parent / spec.checkpoint).resolve() if not Path(spec.checkpoint).is_absolute() \
        else Path(spec.checkpoint)
    run = RunConfig("teacher", spec.model, Params(spec.model_args), dataset, None, NO_MIX, None, None,
                    checkpoint_sha256=_sha256(path, f"teachers.{name}.checkpoint"))
    check_fits(spec.model, spec.model_args, path, dataset, shape, f"teachers.{name}.checkpoint")
    return RunSpec(run, Labels(name, checkpoint=str(path)))


def _sha256(path: Path, field_path: str) -> str:
    if not path.is_file():
        raise ConfigError(field_path, f"checkpoint file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scratch_run(name: str, spec: StudentSpec, mix: Mix, seed: int, dataset: Component,
                 recipe: Recipe) -> RunSpec:
    run = RunConfig("scratch", spec.model, Params(spec.model_args), dataset, recipe, mix, None, seed)
    return RunSpec(run, Labels(name, student=name))


def _student_run(p: dict, spec: StudentSpec, teacher: RunSpec, dataset: Component, recipe: Recipe) -> RunSpec:
    distill = Distill(teacher.run_id, float(p["temperature"]), p["mixed_view"], p["loss"])
    run = RunConfig("student", spec.model, Params(spec.model_args), dataset, recipe, p["mix"], distill,
                    p["seed"])
    return RunSpec(run, Labels(p["student"], teacher=p["teacher"], student=p["student"]))
