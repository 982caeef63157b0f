"""Fused lockstep (`engine.fuse`): students of one architecture trained as one model compute what they compute
unfused, up to float reordering; a fused run resumes exactly; a member that fails does so alone.

The arithmetic is checked in float64, where fused and unfused students agree to 1e-12 (measured: 7e-16):
in fp32 fused convolutions are grouped ones that sum in another order, and training compounds those ulps
(measured after 4 steps: 1e-7 for most runs, 8e-4 for one whose activations sit at a ReLU's kink), so whole
tiny studies in fp32 are compared at 1e-4 on their tables (whose evaluated numbers move less than weights)."""

import copy

import pandas as pd
import pytest
import torch

from mixkd.build import build_model
from mixkd.compare import comparable_tables
from mixkd.data import create_dataset
from mixkd.engine import Engine
from mixkd.fuse import FusedStudents, plain_mixer, stochastic
from mixkd.mixing import Mixer
from mixkd.models import create_model
from mixkd.rundir import RunDir
from mixkd.study import load_study, parse_study
from mixkd.train import Lockstep, Member
from tiny import run, tiny_study, write

DATA = {"name": "synthetic", "train_size": 32, "test_size": 16, "img_size": 8}
TOLERANCE = 1e-12  # float64


def grid_study(**grid) -> dict:
    """resnet8 → two resnet8 students of different recipes (lr, momentum, weight decay, Nesterov) and a
    resnet14, under cutmix: the grid's views × T × losses, two epochs of two steps."""
    other = {"model": "resnet8", "name": "r8b",
             "recipe": {"lr": 0.03, "momentum": 0.5, "weight_decay": 1e-3, "nesterov": True}}
    return {"name": "fuse", "dataset": DATA, "baselines": False,
            "recipe": {"epochs": 2, "batch_size": 16, "lr": 0.05, "schedule": "cosine"},
            "teachers": {"t": {"model": "resnet8"}}, "students": ["resnet8", other, "resnet14"],
            "grid": {"mix": ["cutmix"], "temperature": [2, 4], "mixed_view": ["student", "both", "teacher"],
                     "loss": ["kd", "dkd"], "seeds": [0], **grid}}


def train(study: dict, fuse: bool) -> list[Member]:
    """The study's students as one lockstep group, two epochs, fused or not."""
    parsed = parse_study(study)
    data = create_dataset("synthetic", **{k: v for k, v in DATA.items() if k != "name"})
    engine = Engine(fuse=fuse).resolve(torch.device("cpu"))
    torch.manual_seed(0)
    teacher = build_model(parsed.runs[0].run, data).eval()
    members = [Member(r.run, data, engine, teacher) for r in parsed.runs if r.role == "student"]
    group = Lockstep.of(members, data, engine, teacher)
    for epoch in (1, 2):
        group.begin_epoch()
        for x, y, index in group.loader:
            group.step(x.to(torch.get_default_dtype()), y, index, epoch, len(group.loader))
        group.end_epoch()
    return members


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_fused_students_train_as_they_do_unfused(float64):
    """The resnet8 students (two recipes, three views, two losses) fuse into one block, the resnet14 ones into
    another, and each ends where it would unfused: weights, BN statistics, momentum, steps and lr."""
    study = grid_study(temperature=[4], loss=["kd", "dkd"])
    apart, fused = train(study, False), train(study, True)
    assert [m.fused for m in fused] == [{"resnet8": 12, "resnet14": 6}[m.run.model] for m in fused]
    assert all(m.fused == 1 for m in apart)
    for a, b in zip(apart, fused):
        assert a.error is None and b.error is None
        for (key, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            torch.testing.assert_close(y, x, rtol=0, atol=TOLERANCE, msg=key)  # num_batches_tracked: exactly
        for x, y in zip(a.optimizer.state.values(), b.optimizer.state.values()):
            torch.testing.assert_close(y["momentum_buffer"], x["momentum_buffer"], rtol=0, atol=TOLERANCE)
        assert a.progress.step == b.progress.step == 4
        assert a.optimizer.param_groups[0]["lr"] == b.optimizer.param_groups[0]["lr"]


def test_what_cannot_fuse_trains_beside_the_fused_as_it_would_alone():
    """Random layers (each run's own stream) cannot fuse, nor a feature method, nor a student in a mixed view
    of a mix that is not just its images (manifold mixup); those train unfused in the group, bit for bit."""
    assert stochastic(create_model("timm/vit_tiny_patch16_224", num_classes=4, img_size=16, patch_size=4,
                                   drop_path_rate=0.1))
    assert not stochastic(create_model("resnet8", num_classes=4))
    names = ("mixup", "cutmix", "pmu", "resizemix", "mixup_cutmix",
             "manifold_mixup", "transmix", "mixup_transmix")
    assert [plain_mixer(Mixer(n)) for n in names] == [True] * 5 + [False] * 3
    assert not plain_mixer(Mixer("mixup_transmix", {"switch_prob": 0.0}))  # whose every draw is a mixup one
    study = grid_study(mix=["manifold_mixup"], mixed_view=["student", "teacher"], temperature=[4],
                       loss=["kd", {"name": "fitnet", "hint_layer": 1}])
    apart, fused = train(study, False), train(study, True)
    assert sorted((m.run.loss.name, m.run.view.student_mixed, m.fused) for m in fused) == [
        ("fitnet", False, 1)] * 3 + [("fitnet", True, 1)] * 3 + [("kd", False, 1), ("kd", False, 2),
                                                                 ("kd", False, 2)] + [("kd", True, 1)] * 3
    for a, b in zip(apart, fused):
        assert a.error is None and b.error is None
        if b.fused == 1:
            for (key, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
                assert torch.equal(x, y), key


def fused_study(name: str, **overrides) -> dict:
    """The tiny study, fused: two cnn_tiny students of different lr × mix × view."""
    return tiny_study(name, **{"engine": {"lockstep": 8, "fuse": True},
                               "students": ["cnn_tiny",
                                            {"model": "cnn_tiny", "name": "slow", "recipe": {"lr": 0.01}}],
                               "grid": {"mix": ["none", "mixup"], "temperature": [4],
                                        "mixed_view": ["student", "both"], "loss": ["kd"], "seeds": [0]},
                               **overrides})


def test_a_fused_study_gives_the_unfused_tables_and_records_fusion(tmp_path):
    fused = write(tmp_path, fused_study("f"))
    apart = write(tmp_path, fused_study("f", engine={"lockstep": 8, "fuse": False}), "apart.yaml")
    assert run(fused, tmp_path / "fused") == 0 and run(apart, tmp_path / "apart") == 0
    runs = pd.read_csv(tmp_path / "fused" / "runs.csv")
    students = runs[runs["role"] == "student"]
    assert runs["engine_fuse"].all() and sorted(students["fused_size"]) == [2] * 2 + [4] * 4  # a group per mix
    assert (pd.read_csv(tmp_path / "apart" / "runs.csv")["fused_size"] == 1).all()
    a, b = comparable_tables(tmp_path / "apart"), comparable_tables(tmp_path / "fused")
    for name in a:
        if name == "metrics":  # t-SNE amplifies any difference (it is chaotic): not a measure to compare
            a[name], b[name] = (t[t["metric"] != "tsne"].reset_index(drop=True) for t in (a[name], b[name]))
        pd.testing.assert_frame_equal(b[name], a[name], check_exact=False, rtol=1e-4, atol=1e-4, obj=name)


def test_a_fused_run_killed_and_resumed_is_bitwise_the_uninterrupted_one(tmp_path, monkeypatch):
    path = write(tmp_path, fused_study("k", recipe={"epochs": 3, "batch_size": 32, "schedule": "cosine",
                                                     "eval_batch_size": 64}))
    assert run(path, tmp_path / "reference") == 0
    end_epoch, killed = Member.end_epoch, []

    def stop(self, done, *args, **kwargs):  # Ctrl-C after the fused students' second epoch, once
        if done == 2 and self.run.distill and not killed:
            killed.append(self)
            raise KeyboardInterrupt
        end_epoch(self, done, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Member, "end_epoch", stop)
        assert run(path, tmp_path / "killed") != 0
    assert run(path, tmp_path / "killed") == 0
    student = next(r for r in load_study(path).runs if r.role == "student")
    assert RunDir(tmp_path / "killed", student.run_id).read_summary()["resumed_from_epoch"] == 1
    for (name, got), want in zip(comparable_tables(tmp_path / "killed").items(),
                                 comparable_tables(tmp_path / "reference").values()):
        pd.testing.assert_frame_equal(got, want, obj=name)


def test_a_member_whose_loss_diverges_fails_alone(tmp_path):
    """A fused member whose loss becomes non-finite is recorded failed at the epoch's end and is not fused
    again; the others train on as they would without it."""
    diverging = {"model": "cnn_tiny", "name": "wild", "recipe": {"lr": 1e8}}
    study = fused_study("n", students=["cnn_tiny", diverging], recipe={"epochs": 3, "batch_size": 32,
                                                                       "schedule": "constant"})
    assert run(write(tmp_path, study), tmp_path / "out") == 1
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    students = runs[runs["role"] == "student"]
    failed = students[students["status"] == "failed"]
    assert set(failed["student"]) == {"wild"} and failed["error"].str.contains("loss became").all()
    calm = copy.deepcopy(study)
    calm["students"] = ["cnn_tiny"]
    assert run(write(tmp_path, calm, "calm.yaml"), tmp_path / "calm") == 0
    want = pd.read_csv(tmp_path / "calm" / "runs.csv").set_index("run_id")["top1_last"]
    got = runs.set_index("run_id").loc[want.index, "top1_last"]
    pd.testing.assert_series_equal(got, want, check_exact=False, atol=1e-4)


def test_worker_processes_give_the_fused_tables_of_one_process(tmp_path):
    """The groups, hence the fused blocks, do not depend on the executor: `--workers 2` gives equal tables."""
    path = write(tmp_path, fused_study("w"))
    assert run(path, tmp_path / "one") == 0 and run(path, tmp_path / "two", "--workers", "2") == 0
    for (name, got), want in zip(comparable_tables(tmp_path / "two").items(),
                                 comparable_tables(tmp_path / "one").values()):
        pd.testing.assert_frame_equal(got, want, obj=name)


def test_a_block_whose_first_fused_step_fails_trains_unfused_bit_for_bit(monkeypatch):
    """Fusion itself failing (an op vmap cannot batch, say) is no run's failure: its members train unfused, as
    they would have without fusion, and a warning says so once."""
    study = grid_study(temperature=[4], loss=["kd"], mixed_view=["both"])
    apart = train(study, False)

    def cannot(self, inputs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(FusedStudents, "forward", cannot)
    with pytest.warns(RuntimeWarning, match="could not be fused and train unfused: RuntimeError: no batching"):
        fused = train(study, True)
    for a, b in zip(apart, fused):
        assert b.error is None and b.fused == 1
        for (key, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
            assert torch.equal(x, y), key
