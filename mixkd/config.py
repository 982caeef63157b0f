"""A resolved run as a frozen tree: what it computes, every default filled in, and the names it goes by.

A study file is read once (`mixkd.study`) into these; training, the engine, the runner, the analyses and the
tables then read attributes (`run.recipe.lr`, `run.distill.temperature`, `run.imported`), never string keys.
`as_dict()` is the one place a run becomes plain data: its id hashes it, its run directory's config.yaml and
the study record store it, a saved config is compared with it. It gives exactly the dicts ids always hashed,
so typing the tree moved no run id.

Also the vocabulary every layer shares, defined once: the roles, the mixed views, the evaluation batch size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Iterator, Literal

ROLES = ("teacher", "scratch", "student")  # what a run is, in the order runs are trained
Role = Literal[ROLES]
EVAL_BATCH_SIZE = 500  # the default recipe's, and what an imported teacher (it has no recipe) evaluates with
DEFAULT_SCHEDULE = "multistep"  # the default recipe's learning-rate schedule, by name


@dataclass(frozen=True)
class View:
    student_mixed: bool  # the student's input is the mixed batch
    teacher_mixed: bool  # the teacher's input is the mixed batch
    interpolate_teacher: bool  # the teacher saw the clean batch: blend its outputs with the mix's λ, partners


# Who sees the mixed images (a study's `mixed_view`), in the order tables and figures list them.
VIEWS: dict[str, View] = {
    "none": View(False, False, False),
    "student": View(True, False, True),  # p = λ·p_T(x_a) + (1-λ)·p_T(x_b): one clean teacher forward
    "teacher": View(False, True, False),  # ablation: the student trains on clean images
    "both": View(True, True, False),  # MIX-KD / DeiT: both see the identical mixed tensor
}
VIEW_ORDER = tuple(VIEWS)
MixedView = Literal[VIEW_ORDER]


def run_id(config: dict) -> str:
    """Short stable hash of a run's plain config: key order is irrelevant, any other value gives a new id."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _freeze(value):
    if isinstance(value, Mapping):
        return Params(value)
    return tuple(map(_freeze, value)) if isinstance(value, (list, tuple)) else value


def _thaw(value):
    if isinstance(value, Params):
        return value.thaw()
    return list(map(_thaw, value)) if isinstance(value, tuple) else value


class Params(Mapping):
    """A component's parameters (or a model's arguments): an immutable, hashable mapping. Lists are held as
    tuples, and `thaw()` gives them back as the lists a study file and a config.yaml hold."""

    __slots__ = ("_items",)

    def __init__(self, values: Mapping | None = None):
        object.__setattr__(self, "_items", tuple((str(k), _freeze(v)) for k, v in (values or {}).items()))

    def __setattr__(self, name, value):
        raise AttributeError("Params are immutable")

    def __getitem__(self, key: str):
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (k for k, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items))

    def __reduce__(self):
        return Params, (self.thaw(),)

    def __repr__(self) -> str:
        return f"Params({self.thaw()!r})"

    def thaw(self) -> dict:
        return {k: _thaw(v) for k, v in self._items}


@dataclass(frozen=True)
class Component:
    """A registered component (dataset, loss, schedule) as a run uses it: its name and every parameter."""

    name: str
    params: Params = field(default_factory=Params)

    @classmethod
    def from_dict(cls, d: Mapping) -> "Component":
        return cls(d["name"], Params({k: v for k, v in d.items() if k != "name"}))

    def kwargs(self) -> dict:
        """The parameters as the registered entry takes them (lists as lists)."""
        return self.params.thaw()

    def as_dict(self) -> dict:
        return {"name": self.name, **self.kwargs()}


@dataclass(frozen=True)
class Mix(Component):
    """A mixing variant: the mixer's name and parameters, and `prob`, the chance that a batch is mixed."""

    prob: float = field(kw_only=True)  # a study's default: the mixers registry's `settings`

    @classmethod
    def from_dict(cls, d: Mapping) -> "Mix":
        params = Params({k: v for k, v in d.items() if k not in ("name", "prob")})
        return cls(d["name"], params, prob=d["prob"])

    def as_dict(self) -> dict:
        return {"name": self.name, "prob": self.prob, **self.kwargs()}


NO_MIX = Mix("none", prob=1.0)
CE = Component("ce")  # what a run without a teacher trains with: (mixed-)label cross-entropy


SGD = Component("sgd")  # the default optimizer: torch's SGD with the recipe's momentum, as RepDistiller


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """How one run trains. Defaults: the RepDistiller / MIX-KD CIFAR recipe (schedule: DEFAULT_SCHEDULE).

    The fields added since the first ids (`optimizer` on, below) stay out of `as_dict` while they hold their
    defaults, so adding them moved no run id."""

    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9  # sgd's
    weight_decay: float = 5e-4
    nesterov: bool = False  # sgd's
    schedule: Component  # resolved with every parameter: a study names it ("cosine", {name: multistep, ...})
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    eval_batch_size: int = EVAL_BATCH_SIZE
    optimizer: Component = SGD  # `mixkd.optimizers`, resolved with every parameter
    clip_grad: float | None = None  # clip gradients before each step (timm's dispatch_clip_grad) ...
    clip_mode: Literal["norm", "value", "agc"] = "norm"  # ... by their global norm, by value, or adaptively
    ema_decay: float | None = None  # keep an EMA of the weights (timm's ModelEmaV3; DeiT: 0.99996), evaluated too
    augment: str | None = None  # timm RandAugment on the training images, e.g. DeiT's "rand-m9-mstd0.5-inc1"
    random_erasing: float | None = None  # the probability of erasing a box of each training image (DeiT: 0.25)
    repeated_augment: int | None = None  # DeiT's repeated augmentation: each drawn image this many times (DeiT: 3)
    # data-parallel over this many devices (`mixkd.ranks`), `batch_size` the global batch; hashed when > 1: each
    # rank's BatchNorm statistics and mixing draws are its own, so a run on 2 devices computes something else
    devices: int = 1
    sync_bn: bool = False  # BatchNorm statistics over the global batch (CUDA only); hashed when set

    @classmethod
    def from_dict(cls, d: Mapping) -> "Recipe":
        return cls(**{**d, "schedule": Component.from_dict(d["schedule"]),
                      "optimizer": Component.from_dict(d.get("optimizer", SGD.as_dict()))})

    def as_dict(self) -> dict:
        later = ("optimizer", "clip_grad", "clip_mode", "ema_decay", "augment", "random_erasing",
                 "repeated_augment", "devices", "sync_bn")
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in later}
        d["schedule"] = self.schedule.as_dict()
        if self.optimizer != SGD:
            d["optimizer"] = self.optimizer.as_dict()
        if self.clip_grad is not None:
            d |= {"clip_grad": self.clip_grad, "clip_mode": self.clip_mode}
        for key in ("ema_decay", "augment", "random_erasing", "repeated_augment"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.devices > 1:
            d["devices"] = self.devices
        return d | ({"sync_bn": True} if self.sync_bn else {})

    def loader_options(self) -> dict:
        """What the training loader draws beside its batches, where set: a dataset's `train_loader` keywords."""
        return {k: getattr(self, k) for k in ("augment", "random_erasing", "repeated_augment")
                if getattr(self, k) is not None}


@dataclass(frozen=True)
class Distill:
    """A student's distillation: from which teacher run, at what temperature, who sees the mix, which loss."""

    teacher: str  # the teacher run's id
    temperature: float
    mixed_view: MixedView
    loss: Component

    @classmethod
    def from_dict(cls, d: Mapping) -> "Distill":
        return cls(d["teacher"], d["temperature"], d["mixed_view"], Component.from_dict(d["loss"]))

    def as_dict(self) -> dict:
        return {"teacher": self.teacher, "temperature": self.temperature, "mixed_view": self.mixed_view,
                "loss": self.loss.as_dict()}


@dataclass(frozen=True)
class RunConfig:
    """What one run computes: everything its id hashes. Ask it what it is through `role`, `is_teacher`,
    `imported` (a teacher given as a checkpoint: it trains nothing) and `distill` (a student's settings, None
    for teachers and students from scratch); these always agree."""

    role: Role
    model: str
    model_args: Params
    dataset: Component  # what the data is (how it is fetched, e.g. `download`, is no part of a run)
    recipe: Recipe | None  # None: an imported teacher
    mix: Mix  # what the run's batches are mixed with (a student's: seen as `distill.mixed_view` says)
    distill: Distill | None
    seed: int | None  # None: an imported teacher
    checkpoint_sha256: str | None = None  # an imported teacher's checkpoint file, by content

    def __post_init__(self):
        if (self.role == "student") != (self.distill is not None):
            raise ValueError(f"a {self.role} run {'without' if self.distill is None else 'with'} a teacher")
        if self.imported != (self.recipe is None) or self.imported != (self.seed is None) or \
                (self.imported and not self.is_teacher):
            raise ValueError("only a teacher is imported, and only an imported one has no recipe or seed")

    @property
    def is_teacher(self) -> bool:
        return self.role == "teacher"

    @property
    def imported(self) -> bool:
        return self.checkpoint_sha256 is not None

    @property
    def teacher(self) -> str | None:
        """The id of the teacher run a student distils from; None for other runs."""
        return self.distill.teacher if self.distill else None

    @property
    def temperature(self) -> float | None:
        return self.distill.temperature if self.distill else None

    @property
    def loss(self) -> Component:
        return self.distill.loss if self.distill else CE

    @property
    def view(self) -> View:
        """Who sees the mixed batch: a student's `mixed_view`; a run without a teacher trains on it."""
        return VIEWS[self.distill.mixed_view if self.distill else "student"]

    @property
    def epochs(self) -> int:
        """The epochs the run trains and logs: its method's pre-training stage (`init_epochs`), then its recipe's."""
        return self.recipe.epochs + self.loss.params.get("init_epochs", 0) if self.recipe else 0

    @property
    def eval_batch_size(self) -> int:
        return self.recipe.eval_batch_size if self.recipe else EVAL_BATCH_SIZE

    @classmethod
    def from_dict(cls, d: Mapping) -> "RunConfig":
        return cls(d["role"], d["model"], Params(d["model_args"]), Component.from_dict(d["dataset"]),
                   Recipe.from_dict(d["recipe"]) if d["recipe"] else None, Mix.from_dict(d["mix"]),
                   Distill.from_dict(d["distill"]) if d["distill"] else None, d["seed"],
                   d.get("checkpoint_sha256"))

    def as_dict(self) -> dict:
        d = {"role": self.role, "model": self.model, "model_args": self.model_args.thaw(),
             "dataset": self.dataset.as_dict(), "recipe": self.recipe.as_dict() if self.recipe else None,
             "mix": self.mix.as_dict(), "distill": self.distill.as_dict() if self.distill else None,
             "seed": self.seed}
        return d | ({"checkpoint_sha256": self.checkpoint_sha256} if self.imported else {})


@dataclass(frozen=True)
class Labels:
    """What a run is called in its study: no part of its id."""

    name: str  # the teacher's or student's name in the study (two students may share a model)
    teacher: str | None = None  # a student's teacher, by name
    student: str | None = None  # a student's (or a scratch run's) name
    checkpoint: str | None = None  # an imported teacher's checkpoint file: where to load it from

    @classmethod
    def from_dict(cls, d: Mapping) -> "Labels":
        return cls(**d)

    def as_dict(self) -> dict:
        d = asdict(self)
        return d if self.checkpoint else {k: v for k, v in d.items() if k != "checkpoint"}


@dataclass(frozen=True)
class RunSpec:
    """One run of a study: what it computes (`run`, hashed into `run_id`) and what it is called (`names`).
    `config` and `labels` are the two as plain data, as config.yaml holds them."""

    run: RunConfig
    names: Labels
    run_id: str = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "run_id", run_id(self.run.as_dict()))

    @classmethod
    def from_dicts(cls, config: Mapping, labels: Mapping) -> "RunSpec":
        return cls(RunConfig.from_dict(config), Labels.from_dict(labels))

    @property
    def role(self) -> str:
        return self.run.role

    @property
    def config(self) -> dict:
        return self.run.as_dict()

    @property
    def labels(self) -> dict:
        return self.names.as_dict()
