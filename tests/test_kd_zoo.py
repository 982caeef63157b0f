"""The KD zoo through the whole loop: every method trains end to end in every mixed view it is defined for, its
trainable parts train with the student and survive a kill, lockstep changes no number, and a study a method
cannot run is refused when it is read. (The methods' formulas: test_feature_losses.py; their parts:
test_connectors.py; the absence of host syncs in a step: test_engine.py.)"""

import pandas as pd
import pytest
import torch

from mixkd.build import build_model
from mixkd.compare import comparable_tables
from mixkd.config import VIEW_ORDER
from mixkd.data import create_dataset
from mixkd.engine import Engine
from mixkd.errors import ConfigError
from mixkd.losses import LOSSES
from mixkd.losses.base import FeatureLoss
from mixkd.rundir import RunDir
from mixkd.runner import run_study
from mixkd.study import load_study, parse_study
from mixkd.train import Lockstep, Member
from mixkd.work import Job
from tiny import run, write

FEATURE = sorted(n for n in LOSSES.names() if issubclass(LOSSES.get(n), FeatureLoss))
DIGITS = {"test_fraction": 0.87, "val_size": 48}  # small enough for the CPU, and the analyses on 48 images
# one pre-training epoch, 16 CRD negatives
SETTINGS = {"ab": {"init_epochs": 1}, "ft": {"init_epochs": 1}, "fsp": {"init_epochs": 1}, "crd": {"negatives": 16}}
# methods whose parts hold parameters at this pair (resnet14 → resnet8: equal channels, so AB needs no connector)
WITH_PARAMETERS = {"fitnet", "vid", "cc", "crd", "ft", "ofd", "reviewkd"}


def loss(name: str, **extra) -> dict:
    return {"name": name, **SETTINGS.get(name, {}), **extra}


def zoo(name: str, losses: list, views=VIEW_ORDER, epochs: int = 1, **overrides) -> dict:
    """resnet14 → resnet8 on digits (185 training images, 48 held out to evaluate on); `losses` × mixup ×
    `views`, CRD only where defined."""
    return {"name": name, "dataset": {"name": "digits", **DIGITS},
            "recipe": {"epochs": epochs, "batch_size": 32, "lr": 0.05, "schedule": "cosine", "eval_batch_size": 512},
            "teachers": {"r14": {"model": "resnet14"}}, "students": ["resnet8"],
            "grid": {"mix": ["mixup"], "temperature": [4], "mixed_view": list(views), "loss": losses, "seeds": [0]},
            "exclude": [{"loss": {"name": "crd"}, "mixed_view": v} for v in ("student", "teacher") if v in views],
            "baselines": False, **overrides}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every feature method and the logit methods beside them, in every view, trained once in lockstep."""
    tmp = tmp_path_factory.mktemp("zoo")
    path = write(tmp, zoo("zoo", [loss(n) for n in FEATURE] + ["dist", "dkd", loss("kd", standardise=True)]))
    assert run(path, tmp / "out") == 0
    return path, tmp / "out"


def test_every_method_trains_in_every_view_it_is_defined_for(trained):
    path, out = trained
    runs = pd.read_csv(out / "runs.csv")
    students = runs[runs["role"] == "student"]
    assert (runs["status"] == "complete").all()
    views = students.groupby("loss")["mixed_view"].agg(lambda v: tuple(sorted(v)))
    for name in FEATURE:
        assert views[name] == tuple(sorted(LOSSES.get(name).views)), name
    assert students.groupby("loss")["lockstep_size"].max().max() > 1
    epochs = pd.read_parquet(out / "epochs.parquet").merge(students[["run_id", "loss"]], on="run_id")
    for name in FEATURE:
        rows = epochs[epochs["loss"] == name]
        assert rows[f"train_{name}"].notna().any() and rows["train_loss"].notna().all(), name


@pytest.mark.parametrize("name", FEATURE)
def test_a_methods_parameters_are_counted_apart_from_the_students(trained, name):
    runs = pd.read_csv(trained[1] / "runs.csv")
    counts = set(runs.loc[runs["loss"] == name, "distiller_params"])
    assert min(counts) > 0 if name in WITH_PARAMETERS else counts == {0}


def test_a_pre_training_stage_logs_its_own_epochs_first(trained):
    """AB, FT and FSP: `init_epochs` epochs of the method's own loss (no CE), then the run's epochs."""
    runs = pd.read_csv(trained[1] / "runs.csv")
    epochs = pd.read_parquet(trained[1] / "epochs.parquet").merge(runs[["run_id", "loss"]], on="run_id")
    for name, part in (("ab", "ab"), ("ft", "paraphraser"), ("fsp", "fsp")):
        rows = epochs[epochs["loss"] == name].sort_values(["run_id", "epoch"])
        first, then = rows[rows["epoch"] == 1], rows[rows["epoch"] == 2]
        assert first[f"train_{part}"].notna().all() and first["train_ce"].isna().all(), name
        assert then["train_ce"].notna().all() and len(then) == len(first), name


def test_lockstep_changes_no_number_with_methods_mixed_in_a_group(trained, tmp_path):
    """Runs of different methods (and parts, memories, pre-training stages) share batches and teacher forwards
    in lockstep; trained one by one they give the very same tables."""
    path, together = trained
    study = load_study(path)
    alone = tmp_path / "alone"
    assert run(write(tmp_path, {**zoo("zoo", [loss(n) for n in ("fitnet", "crd", "ab", "rkd", "reviewkd")],
                                      views=("none", "both")), "engine": {"lockstep": 1}}), alone) == 0
    one_by_one = comparable_tables(alone)
    ids = set(one_by_one["runs"]["run_id"])
    assert len(ids) == 1 + 5 * 2 and ids <= {r.run_id for r in study.runs}
    def numbers(table: pd.DataFrame) -> pd.DataFrame:  # without the other methods' (empty) parameter columns
        return table.drop(columns="variant", errors="ignore").dropna(axis=1, how="all")  # and study-wide labels

    for name, table in comparable_tables(together).items():
        subset = table[table["run_id"].isin(ids)].reset_index(drop=True)
        pd.testing.assert_frame_equal(numbers(subset), numbers(one_by_one[name]), check_dtype=False,
                                      check_like=True, obj=name)


def kill_in_epoch(monkeypatch, epoch: int):
    """Stop the study (as Ctrl-C does, once) after a student's epoch `epoch` trained, before it is logged or
    checkpointed."""
    end_epoch, killed = Member.end_epoch, []

    def stop(self, done, *args, **kwargs):
        if done == epoch and self.run.distill and not killed:
            killed.append(self)
            raise KeyboardInterrupt
        end_epoch(self, done, *args, **kwargs)

    monkeypatch.setattr(Member, "end_epoch", stop)


@pytest.mark.parametrize("method", [loss("fitnet"), loss("vid"), loss("crd"), loss("ab", init_epochs=2)],
                         ids=lambda m: m["name"])
def test_parts_memories_and_pre_training_survive_a_kill(method, tmp_path, monkeypatch):
    """Killed in epoch 2 (for AB in its pre-training; after FitNet's connector, VID's regressor, CRD's memory and
    negatives' generator have moved), a resumed run ends exactly where an uninterrupted one does."""
    path = write(tmp_path, zoo("resume", [method], views=("both",), epochs=2))
    student = next(r for r in load_study(path).runs if r.role == "student")
    assert run(path, tmp_path / "reference") == 0
    with monkeypatch.context() as patch:
        kill_in_epoch(patch, 2)
        assert run(path, tmp_path / "killed") != 0
    killed = RunDir(tmp_path / "killed", student.run_id)
    assert killed.training_state()["epoch"] == 1 and ("init_optimizer" in killed.training_state()) == (
        method["name"] == "ab")
    assert run(path, tmp_path / "killed") == 0
    assert killed.read_summary()["resumed_from_epoch"] == 1
    for (name, got), want in zip(comparable_tables(tmp_path / "killed").items(),
                                 comparable_tables(tmp_path / "reference").values()):
        pd.testing.assert_frame_equal(got, want, obj=name)
    got, want = (torch.load(RunDir(out, student.run_id).path / "checkpoint.pt", weights_only=True)["distiller"]
                 for out in (tmp_path / "killed", tmp_path / "reference"))
    assert got.keys() == want.keys()
    for key in got:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("name", ["fitnet", "vid", "crd", "ofd", "reviewkd", "ft", "cc"])
def test_a_methods_parts_train_with_the_student(name):
    """One step moves the student and every trainable part the method's loss reaches (FT's paraphraser trains
    only in its pre-training stage), and never the teacher."""
    study = parse_study(zoo("parts", [loss(name)], views=("none",)))
    data = create_dataset("digits", **DIGITS)
    engine = Engine().resolve(torch.device("cpu"))
    teacher = build_model(study.runs[0].run, data).eval()
    member = Member(study.runs[1].run, data, engine, teacher)
    group = Lockstep.of([member], data, engine, teacher)
    parts = member.distiller.loss
    trained = {id(p) for p in parts.main_parameters()}
    teacher_before = [p.clone() for p in teacher.parameters()]
    member.distiller.train()
    batch = next(iter(group.loader))
    for epoch in range(1, member.init_epochs + 1):  # FT's pre-training: one step an epoch
        group.step(*batch, epoch, 1)
    before = {k: v.clone() for k, v in parts.state_dict().items() if isinstance(v, torch.Tensor)}
    group.step(*batch, member.init_epochs + 1, 1)
    assert member.error is None
    moved = {k for k, v in before.items() if not torch.equal(v, parts.state_dict()[k])}
    named = dict(parts.named_parameters())
    assert {k for k, p in named.items() if id(p) in trained} <= moved, name
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), teacher_before))


# --- a study a method cannot run is refused when it is read ------------------------------------------------


@pytest.mark.parametrize("change, says", [
    ({"grid": {"loss": ["crd"], "mixed_view": ["student"]}},
     "grid.mixed_view: loss 'crd' is defined for the views none, both"),
    ({"students": ["cnn_tiny"], "grid": {"loss": ["ofd"]}},
     "students.cnn_tiny.model: loss 'ofd' needs what cnn_tiny does not expose: SmallCNN has no pre-activation"),
    ({"teachers": {"wide": {"model": "resnet32x4"}}, "grid": {"loss": [{"name": "fsp"}]}},
     "grid.loss: loss 'fsp' cannot distil resnet32x4 into resnet8: it needs the student's and teacher's maps to "
     "have equal channels"),
    ({"students": {"vit": {"model": "timm/vit_tiny_patch16_224",
                           "model_args": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}},
      "grid": {"loss": ["at"]}},
     "grid.loss: loss 'at' cannot distil resnet14 into timm/vit_tiny_patch16_224: it distils feature maps, and "
     "the student's maps are not (C, H, W) maps"),
    ({"grid": {"loss": [{"name": "fitnet", "hint_layer": 7}]}},
     "grid.loss: loss 'fitnet' cannot distil resnet14 into resnet8: hint_layer 7 is past the last map"),
])
def test_a_method_that_cannot_run_is_one_line_when_the_study_is_read(change, says):
    study = zoo("refused", ["kd"], views=("both",))
    study = {**study, **{k: v for k, v in change.items() if k != "grid"},
             "grid": {**study["grid"], **change.get("grid", {})}, "exclude": []}
    with pytest.raises(ConfigError) as e:
        parse_study(study)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_second_run_of_a_finished_zoo_trains_nothing(trained):
    """Runs with a pre-training stage log more epochs than their recipe's: still complete, never retrained."""
    path, out = trained
    summaries = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}
    assert run_study(Job(load_study(path), out, device="cpu")) == []
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")} == summaries
