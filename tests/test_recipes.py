"""Recipes beyond RepDistiller's SGD (issue 18): timm's optimizers with their parameter groups, gradient
clipping and an EMA of the weights equal a hand-written loop step by step; the defaults move no run id; bad
values are one line."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from timm.scheduler import create_scheduler_v2

from mixkd.build import build_model
from mixkd.data import create_dataset
from mixkd.engine import Engine, lockstep_key
from mixkd.errors import ConfigError
from mixkd.fuse import fuse_key
from mixkd.optimizers import OPTIMIZERS, build_optimizer
from mixkd.schedules import SCHEDULES
from mixkd.study import parse_study
from mixkd.train import Lockstep, Member
from tiny import comparable, image_folder, run, tiny_study, write

CPU = torch.device("cpu")
DEIT = {"optimizer": {"name": "adamw", "betas": [0.9, 0.95]}, "lr": 2e-3, "weight_decay": 0.05, "clip_grad": 0.5,
        "schedule": "cosine", "warmup_epochs": 1, "epochs": 2, "ema_decay": 0.9}


def scratch(recipe: dict):
    study = tiny_study("recipes", teachers={"t": {"model": "cnn_tiny"}},
                       students={"s": {"model": "cnn_small", "recipe": recipe}})
    return next(r for r in parse_study(study).runs if r.role == "scratch")


def test_adamw_with_clipping_ema_and_warm_cosine_equals_a_hand_written_loop_step_by_step():
    run = scratch(DEIT).run
    data = create_dataset("synthetic", train_size=96, test_size=32)
    engine = Engine(precision="fp32", channels_last=False, optimizer="loop").resolve(CPU)
    member = Member(run, data, engine, None)
    group = Lockstep.of([member], data, engine, None)
    member.distiller.train()

    torch.manual_seed(run.seed)
    model = build_model(run, data).train()
    # timm's groups: no weight decay on biases and norms (every parameter of one dimension)
    flat = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": flat, "weight_decay": 0.0},
                             {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": 0.05}],
                            lr=2e-3, betas=(0.9, 0.95), eps=1e-8)
    assert len(flat) > 0 and all(isinstance(o, torch.optim.AdamW) for o in (member.optimizer, opt))
    ema = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm's statistics averaged too
    steps, step, clipped = len(group.loader), 0, 0
    for epoch in (1, 2):
        for x, y, index in group.loader:
            group.step(x, y, index, epoch, steps)
            lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / steps / 2)) * min(1.0, (step + 1) / steps)
            for g in opt.param_groups:
                g["lr"] = lr
            loss = -(F.one_hot(y, data.num_classes) * F.log_softmax(model(x), dim=1)).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            clipped += torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5) > 0.5
            opt.step()
            for k, v in model.state_dict().items():
                ema[k] = 0.9 * ema[k] + 0.1 * v if v.is_floating_point() else v.clone()
            step += 1
            for mine, theirs in zip(member.model.parameters(), model.parameters()):
                torch.testing.assert_close(mine, theirs)
            for k, v in member.ema.module.state_dict().items():
                torch.testing.assert_close(v, ema[k])
    assert clipped > 0  # the clipping bit: the test would pass without it otherwise
    assert fuse_key(member, plain_mix=True) is None  # the fused step is SGD's: AdamW runs train unfused
    assert not any(torch.equal(a, b) for a, b in zip(member.ema.module.parameters(), member.model.parameters()))


def test_the_default_optimizer_moves_no_run_id_and_new_settings_do():
    default = scratch({})
    assert scratch({"optimizer": "sgd"}).run_id == default.run_id
    assert "optimizer" not in default.config["recipe"] and "clip_grad" not in default.config["recipe"]
    deit = scratch(DEIT)
    assert deit.config["recipe"]["optimizer"] == {"name": "adamw", "betas": [0.9, 0.95], "eps": 1e-8}
    assert deit.config["recipe"]["clip_mode"] == "norm"
    assert len({default.run_id, deit.run_id, scratch({**DEIT, "clip_grad": 1.0}).run_id}) == 3


@pytest.mark.parametrize("recipe, says", [
    ({"optimizer": "adamx"}, "students.s.recipe.optimizer.name: unknown optimizer 'adamx'; did you mean"),
    ({"optimizer": {"name": "adamw", "beta": 0.9}}, "students.s.recipe.optimizer"),
    ({"clip_grad": 0}, "students.s.recipe.clip_grad: must be > 0"),
    ({"clip_grad": 1.0, "clip_mode": "l2"}, "clip_mode"),
    ({"random_erasing": 1.5}, "students.s.recipe.random_erasing: must be in (0, 1]"),
    ({"optimizer": {"name": "adamw", "betas": [0.9]}}, "students.s.recipe.optimizer: adamw cannot be built"),
    ({"augment": "rand-m9-inc1-zz"}, "recipe.augment: augment 'rand-m9-inc1-zz': unknown section 'zz'"),
    ({"ema_decay": 1}, "students.s.recipe.ema_decay: must be in (0, 1)"),
    ({"repeated_augment": 1}, "students.s.recipe.repeated_augment: must be ≥ 2, e.g. DeiT's 3"),
])
def test_bad_recipe_settings_are_one_line(recipe, says):
    with pytest.raises(ConfigError) as e:
        scratch(recipe)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_a_deit_style_run_resumes_exactly_and_its_ema_has_columns_of_its_own(tmp_path, monkeypatch):
    study = tiny_study("deit", teachers={"t": {"model": "cnn_tiny"}},
                       students={"s": {"model": "cnn_small", "recipe": {**DEIT, "epochs": 3}}})
    path = write(tmp_path, study)
    assert run(path, tmp_path / "whole") == 0

    end_epoch = Member.end_epoch

    def killed_after_epoch_2(self, epoch, *args):
        end_epoch(self, epoch, *args)
        if epoch == 2 and self.ema is not None:
            raise KeyboardInterrupt
    monkeypatch.setattr(Member, "end_epoch", killed_after_epoch_2)
    assert run(path, tmp_path / "resumed") == 130
    monkeypatch.setattr(Member, "end_epoch", end_epoch)
    assert run(path, tmp_path / "resumed") == 0

    for ours, theirs in zip(comparable(tmp_path / "resumed"), comparable(tmp_path / "whole")):
        pd.testing.assert_frame_equal(ours, theirs)
    runs = pd.read_csv(tmp_path / "resumed" / "runs.csv").set_index("role")
    epochs = pd.read_parquet(tmp_path / "resumed" / "epochs.parquet")
    scratch, teacher = runs.loc["scratch"], runs.loc["teacher"]
    assert scratch["resumed_from_epoch"] == 2 and scratch["optimizer"] == "adamw"
    assert scratch["optimizer_betas"] == "0.9,0.95" and teacher["optimizer"] == "sgd"
    last = epochs[(epochs["run_id"] == scratch["run_id"]) & (epochs["epoch"] == 3)].iloc[0]
    assert last["ema_test_top1"] == scratch["ema_top1_last"] and 0 <= last["ema_test_top1"] <= 1
    assert epochs.loc[epochs["run_id"] == teacher["run_id"], "ema_test_top1"].isna().all()
    # the EMA's analyses beside the model's, its top-1 the one its last epoch logged
    metrics = pd.read_parquet(tmp_path / "resumed" / "metrics.parquet")
    ema = metrics[metrics["metric"].str.startswith("ema_")]
    assert set(ema["run_id"]) == set(runs.loc[["scratch", "student"], "run_id"])
    student = metrics[metrics["run_id"] == runs.loc["student", "run_id"]]
    assert {m for m in student["metric"] if m.startswith("ema_")} == {
        f"ema_{m}" for m in student["metric"] if not m.startswith("ema_")}  # every analysis, distillation's too
    top1 = ema[(ema["run_id"] == scratch["run_id"]) & (ema["metric"] == "ema_top1")]["value"].item()
    assert top1 == pytest.approx(scratch["ema_top1_last"])


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_registered_optimizer_builds_with_its_defaults_and_steps(name):
    run = scratch({"optimizer": name, "weight_decay": 0.05}).run
    data = create_dataset("synthetic", train_size=96, test_size=32)
    model = build_model(run, data)
    optimizer = build_optimizer(model, [], run.recipe, Engine().resolve(CPU))
    before = [p.detach().clone() for p in model.parameters()]
    x, _, _ = next(iter(data.train_loader(4, CPU, seed=0)))
    model(x).logsumexp(1).mean().backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.ndim > 1)
    decays = {p.ndim > 1: g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decays == ({True: 0.05, False: 0.05} if name == "sgd" else {True: 0.05, False: 0.0})


def test_randaugment_and_erasing_are_drawn_on_the_device_by_run_seed_and_keep_lockstep_groups_apart(tmp_path):
    augmented = scratch({"augment": "rand-m9-mstd0.5-inc1"})
    assert augmented.config["recipe"]["augment"] == "rand-m9-mstd0.5-inc1"
    erased = scratch({"random_erasing": 0.25})
    assert len({lockstep_key(augmented), lockstep_key(erased), lockstep_key(scratch({}))}) == 3  # other batches
    data = create_dataset("synthetic", train_size=96, test_size=32)
    plain, twice = (list(data.train_loader(32, CPU, seed=0, augment=a)) for a in (None, "rand-m9-n3"))
    again = list(data.train_loader(32, CPU, seed=0, augment="rand-m9-n3"))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(twice, again))
    assert all(torch.equal(a[1], b[1]) for a, b in zip(plain, twice))  # the same order and labels ...
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(plain, twice))  # ... other images
    study = tiny_study("augmented", recipe={**tiny_study("x")["recipe"], "augment": "rand-m9-mstd0.5-inc1",
                                            "random_erasing": 0.25})
    assert run(write(tmp_path, study), tmp_path / "out") == 0


def test_repeated_augmentation_is_in_the_id_and_lockstep_key_and_trains_on_both_kinds_of_data(tmp_path):
    repeated = scratch({"repeated_augment": 3})
    assert repeated.config["recipe"]["repeated_augment"] == 3 and "repeated_augment" not in scratch({}).config[
        "recipe"]
    assert repeated.run_id != scratch({}).run_id and lockstep_key(repeated) != lockstep_key(scratch({}))
    study = tiny_study("repeated", recipe={**tiny_study("x")["recipe"], "repeated_augment": 3})
    assert run(write(tmp_path, study), tmp_path / "out") == 0
    folder = create_dataset("imagefolder", image_folder(tmp_path / "images", per_class=10, size=20, suffix="jpg"),
                            img_size=16, num_workers=0)
    for world in (1, 2):  # each rank's stream, dealt back in turn, is each image three times in a row
        streams = [torch.cat([i for *_, i in folder.train_loader(6, CPU, seed=0, shard=(rank, world),
                                                                 repeated_augment=3)]) for rank in range(world)]
        dealt = torch.stack(streams, 1).reshape(-1)
        assert len(dealt) == 30 and (dealt.view(10, 3) == dealt.view(10, 3)[:, :1]).all()
        assert len(dealt.unique()) == 10


def test_a_bad_randaugment_string_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match=r"students.s.recipe.augment: augment 'rand-q9'.*rand-m9-mstd0.5-inc1"):
        scratch({"augment": "rand-q9"})


def test_the_timm_schedule_is_timms_scheduler_stepped_per_epoch_as_its_train_py_steps_it():
    """TransMix's: warm-up from 1e-6 over 5 epochs, cosine to 1e-5, 3 cool-down epochs at min lr."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler, total = create_scheduler_v2(optimizer, "cosine", 30, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=5,
                                           cooldown_epochs=3)
    theirs = []
    for epoch in range(total):
        theirs.append(optimizer.param_groups[0]["lr"])
        scheduler.step(epoch + 1)
    params = {"min_factor": 0.01, "warmup_factor": 1e-3, "warmup_epochs": 5, "cooldown_epochs": 3}
    timm = SCHEDULES.get("timm")
    ours = [1e-3 * timm(epoch + frac, total, **params) for epoch in range(total) for frac in (0, .7)]
    assert total == 33 and ours[::2] == pytest.approx(theirs, rel=1e-12) and ours[1::2] == ours[::2]
    per_step = [SCHEDULES.get("timm")(t, 33, per_step=True, **params) for t in (10.0, 10.5, 11.0)]
    assert per_step[0] > per_step[1] > per_step[2]


@pytest.mark.parametrize("schedule, says", [({"name": "timm", "sched": "plateau"}, "validation metric"),
                                            ({"name": "timm", "sched": "cosinee"}, "cosinee.*cosine, tanh"),
                                            ({"name": "timm", "warmup_epochs": -1}, "warmup_epochs must be ≥ 0"),
                                            ({"name": "timm", "cooldown_epochs": 2}, "leaves no epoch")])
def test_a_timm_schedule_that_cannot_work_is_one_line_when_read(schedule, says):
    with pytest.raises(ConfigError, match=rf"students.s.recipe.schedule: .*{says}") as e:
        scratch({"schedule": schedule})
    assert "\n" not in str(e.value)
