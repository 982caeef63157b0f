"""The engine: runs trained in lockstep equal runs trained one by one, and with its features off the
engine equals a plain hand-written KD loop, step by step (CPU)."""

import gc
import traceback
import weakref
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from mixkd.build import build_model
from mixkd.compare import comparable_tables
from mixkd.config import VIEW_ORDER
from mixkd.data import create_dataset
from mixkd.engine import Engine, lockstep_groups
from mixkd.errors import ConfigError, MixkdError
from mixkd.losses import LOSSES
from mixkd.losses.base import FeatureLoss
from mixkd.metrics import compute_metrics, predict
from mixkd.mixing import MIXERS, mixup
from mixkd.models import create_model
from mixkd.rundir import RunDir
from mixkd.study import parse_study
from mixkd.train import Lockstep, Member, mixing_rng, train_group
from tiny import run, tiny_study, write


CPU = torch.device("cpu")
STUDY = tiny_study(
    "engine",
    students={"drop": {"model": "cnn_tiny", "model_args": {"drop_rate": 0.3}},  # draws from torch's RNG
              "small": {"model": "cnn_small"},
              "diverges": {"model": "cnn_tiny", "recipe": {"lr": 1e12}}},  # a NaN must not sink its group
    grid={"mix": ["mixup"], "temperature": [1, 4], "mixed_view": ["student", "teacher", "both"], "seeds": [0]},
    baselines=False)


def train(tmp_path, lockstep: int):
    path = write(tmp_path, {**STUDY, "engine": {"lockstep": lockstep}}, f"lockstep{lockstep}.yaml")
    out = tmp_path / f"out{lockstep}"
    assert run(path, out) == 1  # the diverging runs failed
    tables = comparable_tables(out)  # without lockstep_size: how runs were executed, not what they computed
    return tables["runs"], tables["epochs"], tables["metrics"], pd.read_csv(out / "runs.csv")


def test_lockstep_equals_one_by_one(tmp_path):
    *alone_tables, alone = train(tmp_path, 1)
    *together_tables, together = train(tmp_path, 8)
    assert set(alone["lockstep_size"].dropna()) == {1} and together["lockstep_size"].max() == 8
    failed = together[together["status"] == "failed"]
    assert set(failed["name"]) == {"diverges"} and failed["error"].str.contains("NonFiniteLoss").all()
    assert (together.loc[together["name"] != "diverges", "status"] == "complete").all()
    for a, b in zip(alone_tables, together_tables):  # runs, epochs and analyses
        pd.testing.assert_frame_equal(a, b)


def specs(study=STUDY):
    return parse_study(study).runs


def test_groups_share_teacher_mix_seed_and_batches_and_keep_teachers_first():
    study = {**STUDY, "grid": {**STUDY["grid"], "seeds": [0, 1]}, "baselines": True}
    runs = specs(study)
    groups = lockstep_groups(runs, 8)
    assert sorted(r.run_id for g in groups for r in g) == sorted(r.run_id for r in runs)
    assert max(map(len, groups)) == 8 and groups[0][0].role == "teacher"
    for g in groups:
        lead = g[0].run
        assert all((r.run.teacher, r.run.mix, r.run.seed) == (lead.teacher, lead.mix, lead.seed) for r in g)
    assert [len(g) for g in lockstep_groups(runs, 1)] == [1] * len(runs)


def test_engine_settings_are_checked_and_resolved_per_device():
    with pytest.raises(ConfigError, match="engine.lockstep"):
        parse_study({**STUDY, "engine": {"lockstep": 0}})
    with pytest.raises(ConfigError, match="engine.cpu_threads"):
        parse_study({**STUDY, "engine": {"cpu_threads": 0}})
    with pytest.raises(ConfigError, match="engine.precision.*allowed: auto, bf16, fp32"):
        parse_study({**STUDY, "engine": {"precision": "fp16"}})
    cpu = Engine().resolve(CPU)
    assert (cpu.precision, cpu.channels_last, cpu.optimizer) == ("fp32", False, "loop")
    cuda = Engine().resolve(torch.device("cuda"))
    assert (cuda.precision, cuda.channels_last, cuda.optimizer) == ("bf16", True, "fused")
    # how runs compute is not what they compute: no run id changes
    fast = parse_study({**STUDY, "engine": {"precision": "bf16", "lockstep": 2, "compile": "default"}})
    assert [r.run_id for r in fast.runs] == [r.run_id for r in specs()]


def plain_kd_step(model, opt, teacher, x, y, mix, temperature, view, num_classes):
    """KD as written in the papers, without mixkd's losses or distiller: 0.1·CE(mixed labels) + 0.9·T²·KL."""
    lam = mix.lam[:, None]
    targets = lam * F.one_hot(mix.y_a, num_classes) + (1 - lam) * F.one_hot(mix.y_b, num_classes)
    with torch.no_grad():
        if view == "both":
            p_t = F.softmax(teacher(mix.x) / temperature, dim=1)
        else:
            p_t = F.softmax(teacher(x) / temperature, dim=1)
            p_t = lam * p_t + (1 - lam) * p_t[mix.index]
    logits = model(mix.x)
    log_p_s = F.log_softmax(logits / temperature, dim=1)
    ce = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    kl = (p_t * (p_t.log() - log_p_s)).sum(1).mean() * temperature ** 2
    loss = 0.1 * ce + 0.9 * kl
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss


def test_engine_with_features_off_equals_a_plain_loop_step_by_step():
    study = {**STUDY, "students": {"s": {"model": "cnn_tiny"}}, "recipe": {**STUDY["recipe"], "schedule": "constant"},
             "grid": {**STUDY["grid"], "mixed_view": ["student", "both"]}}
    runs = specs(study)
    teacher_run, students = runs[0].run, [r.run for r in runs[1:]]
    data = create_dataset("synthetic", train_size=96, test_size=32)
    engine = Engine(precision="fp32", channels_last=False, optimizer="loop").resolve(CPU)
    torch.manual_seed(5)
    teacher = build_model(teacher_run, data).eval()
    members = [Member(c, data, engine, teacher) for c in students]
    group = Lockstep.of(members, data, engine, teacher)  # mixup (α = 1), batches of 32, seed 0

    plain = []
    for c in students:
        torch.manual_seed(c.seed)
        model = build_model(c, data)
        plain.append((model, torch.optim.SGD(model.parameters(), lr=c.recipe.lr, momentum=c.recipe.momentum,
                                             weight_decay=c.recipe.weight_decay)))
    rng = mixing_rng(0)
    loader = group.loader
    for m in members:
        m.distiller.train()
    for epoch in (1, 2):
        loss_sums = [0.0] * len(members)
        for x, y, index in loader:
            group.step(x, y, index, epoch, len(loader))
            mix = mixup(x, y, rng)
            for i, ((model, opt), m, c) in enumerate(zip(plain, members, students)):
                model.train()
                d = c.distill
                loss = plain_kd_step(model, opt, teacher, x, y, mix, d.temperature, d.mixed_view,
                                     data.num_classes)
                loss_sums[i] += loss.detach() * len(y)
                for p_engine, p_plain in zip(m.model.parameters(), model.parameters()):
                    torch.testing.assert_close(p_engine, p_plain)
        for m, total in zip(members, loss_sums):  # the losses the engine summed for its epoch log
            torch.testing.assert_close(m.epoch_sums.pop("loss"), total)
            m.epoch_sums.clear()
    assert all(m.progress.step == 2 * len(loader) for m in members)


def test_runs_resumed_at_different_epochs_catch_up_in_cohorts(tmp_path, monkeypatch):
    study = {**STUDY, "students": {"s": {"model": "cnn_tiny", "model_args": {"drop_rate": 0.3}}},
             "recipe": {**STUDY["recipe"], "epochs": 3}, "grid": {**STUDY["grid"], "mixed_view": ["student"]}}
    runs = specs(study)
    teacher_cfg, students = runs[0], runs[1:]
    data = create_dataset("synthetic", train_size=96, test_size=32)
    engine = Engine().resolve(CPU)
    torch.manual_seed(0)
    teacher = build_model(teacher_cfg.run, data).eval()

    def rundirs(root, runs):
        dirs = [RunDir(root, r.run_id) for r in runs]
        for d, r in zip(dirs, runs):
            d.start(r)
        return dirs

    def trained(root, runs):
        return [m.result(data, 1)["top1_last"] for m in train_group(
            [r.run for r in runs], rundirs(root, runs), data, engine, teacher)], \
            [RunDir(root, r.run_id).read_epochs() for r in runs]

    alone = [trained(tmp_path / "alone", [r]) for r in students]

    real_end = Member.end_epoch

    def killed_after_first_epoch(self, epoch, *args):
        real_end(self, epoch, *args)
        raise KeyboardInterrupt  # like a kill: not an error of the run, nothing recorded

    monkeypatch.setattr(Member, "end_epoch", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_group([students[0].run], rundirs(tmp_path / "both", students[:1]), data, engine, teacher)
    monkeypatch.setattr(Member, "end_epoch", real_end)
    scores, epochs = trained(tmp_path / "both", students)  # one at epoch 1, one at 0
    assert scores == [s[0] for s, _ in alone]
    for e, (_, e_alone) in zip(epochs, alone):
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        assert strip(e) == strip(e_alone[0])


def checkpointed_member(tmp_path, engine):
    """A student trained one epoch to its final checkpoint under `engine`, and its run directory."""
    study = {**STUDY, "students": {"s": {"model": "cnn_tiny"}}, "recipe": {**STUDY["recipe"], "epochs": 1},
             "grid": {**STUDY["grid"], "mixed_view": ["student"], "temperature": [4]}}
    teacher_spec, spec = specs(study)
    data = create_dataset("synthetic", train_size=64, test_size=32)
    rundir = RunDir(tmp_path, spec.run_id)
    rundir.start(spec)
    teacher = build_model(teacher_spec.run, data).eval()
    [member] = train_group([spec.run], [rundir], data, engine, teacher)
    assert member.error is None
    return spec, data, teacher, rundir


def test_a_resumed_run_steps_with_the_engines_optimizer_kernel_and_layout(tmp_path):
    """load_state_dict would bring back the checkpoint's kernel flags and momentum layout: CUDA's fused SGD
    refuses NCHW momentum for channels_last weights."""
    spec, data, teacher, rundir = checkpointed_member(tmp_path, Engine(optimizer="loop").resolve(CPU))
    saved = rundir.load_checkpoint()["optimizer"]["state"]
    engine = Engine(optimizer="foreach", channels_last=True).resolve(CPU)
    member = Member(spec.run, data, engine, teacher, rundir)
    member.resume()
    assert all(g["foreach"] is True and g["fused"] is None for g in member.optimizer.param_groups)
    params = list(member.model.parameters())
    convs = [p for p in params if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    for i, p in enumerate(params):
        buf = member.optimizer.state[p]["momentum_buffer"]
        assert buf.stride() == p.stride()
        torch.testing.assert_close(buf, saved[i]["momentum_buffer"], rtol=0, atol=0)


def test_a_run_checkpointed_on_another_device_fails_saying_how_to_resume(tmp_path):
    spec, data, teacher, rundir = checkpointed_member(tmp_path, Engine().resolve(CPU))
    rundir.save_checkpoint({**rundir.load_checkpoint(), "device": "cuda"})
    member = Member(spec.run, data, Engine().resolve(CPU), teacher, rundir)
    member.guarded(member.resume)
    assert isinstance(member.error, MixkdError)
    assert "written on cuda" in str(member.error) and "--device cuda" in str(member.error)


def test_epochs_are_evaluated_in_fp32_whatever_the_training_precision(tmp_path):
    """bf16 trains; the logged test metrics are the fp32 model's, as the analyses compute them."""
    spec, data, teacher, rundir = checkpointed_member(tmp_path, Engine(precision="bf16").resolve(CPU))
    model = rundir.load_model(build_model(spec.run, data))
    scores = compute_metrics(*predict(model, data.eval_loader(64, CPU)))
    assert rundir.read_epochs()[-1]["test_loss"] == scores["nll"]


def test_a_failed_step_is_recorded_without_holding_its_tensors():
    """The error keeps its traceback for the runs table, but not the failed step's activations: after an
    out-of-memory error the rest of the group needs that memory."""
    held = []

    def failing_step():
        activations = torch.ones(1000)
        held.append(weakref.ref(activations))
        raise ValueError("boom")

    run = SimpleNamespace(error=None, ranks=None)
    Member.guarded(run, failing_step)
    gc.collect()
    assert held[0]() is None
    assert "failing_step" in "".join(traceback.format_exception(run.error)) and str(run.error) == "boom"


@pytest.mark.skipif(not hasattr(torch, "AcceleratorError"), reason="torch without AcceleratorError")
def test_a_device_error_stops_the_group_rather_than_failing_one_run():
    def kernel_assert():
        raise torch.AcceleratorError("CUDA error: device-side assert triggered")

    with pytest.raises(torch.AcceleratorError):
        Member.guarded(SimpleNamespace(error=None, ranks=None), kernel_assert)


def test_compiled_models_train_to_the_eager_numbers():
    """torch.compile (inductor, ~30 s on 2 cores) changes speed, not results beyond float noise."""
    study = {**STUDY, "students": {"s": {"model": "cnn_tiny"}},
             "grid": {**STUDY["grid"], "mixed_view": ["student"], "temperature": [4]}}
    runs = specs(study)
    data = create_dataset("synthetic", train_size=96, test_size=32)
    params = {}
    for mode in (False, "default"):
        engine = Engine(compile=mode).resolve(CPU)
        torch.manual_seed(0)
        teacher = engine.compiled(build_model(runs[0].run, data).eval())
        member = Member(runs[1].run, data, engine, teacher)
        member.distiller.train()
        group = Lockstep.of([member], data, engine, teacher)
        for epoch in (1, 2):
            for batch in group.loader:
                group.step(*batch, epoch, len(group.loader))
        assert member.error is None
        params[mode] = list(member.model.parameters())  # the eager module: what checkpoints save
    for eager, compiled in zip(params[False], params["default"]):
        torch.testing.assert_close(eager, compiled, rtol=1e-4, atol=1e-5)


def test_compiling_keeps_up_with_a_grid_of_architectures(monkeypatch):
    """Each zoo architecture is a new version of the one StagedNet.forward: past dynamo's default limit of 8
    per function, a process's later models would quietly run eager (dynamo's own eager backend here: fast)."""
    from torch._dynamo.utils import counters

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real(model, mode=mode, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    names = ["cnn_tiny", "cnn_small", "cnn_wide", "resnet8", "resnet14", "resnet20", "resnet8x4", "wrn_16_1",
             "wrn_16_2", "wrn_40_1"]
    engine = Engine(compile="default").resolve(CPU)
    with torch._dynamo.config.patch(recompile_limit=8):  # dynamo's default, whatever ran before; restored after
        for name in names:
            engine.compiled(create_model(name, num_classes=4))(torch.randn(2, 3, 32, 32))
    assert counters["frames"]["ok"] == len(names)  # one compiled frame per architecture, none left eager
    torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_engine_steps_without_a_host_sync_and_near_fp32():
    """On CUDA: bf16 + channels_last + fused SGD never make the host wait inside a step (mixing draws
    included), and land near the fp32 loop's losses."""
    study = {**STUDY, "students": {"s": {"model": "cnn_tiny"}},
             "grid": {**STUDY["grid"], "mix": ["cutmix"], "mixed_view": ["student", "both"]}}
    runs = specs(study)
    data = create_dataset("synthetic", train_size=96, test_size=32)
    cuda = torch.device("cuda")
    losses = {}
    engines = {"fast": Engine(), "fp32": Engine(precision="fp32", channels_last=False, optimizer="loop")}
    for name, engine in engines.items():
        engine = engine.resolve(cuda)
        torch.manual_seed(0)
        teacher = engine.prepare(build_model(runs[0].run, data).eval())
        members = [Member(r.run, data, engine, teacher) for r in runs[1:]]
        for m in members:
            m.distiller.train()
        group = Lockstep.of(members, data, engine, teacher)  # cutmix (α = 1), batches of 32, seed 0
        batches = list(group.loader)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for batch in batches:
                group.step(*batch, 1, len(batches))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert [m.error for m in members] == [None] * len(members)
        losses[name] = [m.epoch_sums["loss"].item() / 96 for m in members]
    assert losses["fast"] == pytest.approx(losses["fp32"], rel=0.05)


class HostReads(TorchDispatchMode):
    """Records the ops that would make the host wait for a GPU: reading a value (`.item()`, `bool()`) or
    producing a shape that depends on values (nonzero, boolean-mask indexing). On the CPU they run fine,
    so the mode is how a CPU test sees them."""

    READS = {"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "_unique2", "unique_dim",
             "unique_consecutive", "equal"}
    INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.READS or (name in self.INDEXING and any(
                i is not None and i.dtype == torch.bool for i in args[1])):
            self.seen.add(name)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mix", sorted(MIXERS))
@pytest.mark.parametrize("loss", sorted(set(LOSSES) - {"ce"}))
def test_a_training_step_reads_nothing_back_from_the_device(mix, loss):
    """Loader batch, mixing draw, teacher forward (with the features a method taps) and every view's student
    step queue work for the device without waiting on it: the CUDA test below checks this on a GPU; this one,
    on every mixer, loss and view the loss is defined for. TransMix needs a ViT student, which has no
    (C, H, W) maps: a method that distils them must be refused when the study is read."""
    method = LOSSES.get(loss)
    feature = issubclass(method, FeatureLoss)
    views = method.views if feature else VIEW_ORDER
    vit = {"model": "timm/vit_tiny_patch16_224",  # TransMix reads a ViT student's class attention
           "model_args": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}
    cnn = {"model": "resnet8"} if feature else {"model": "cnn_tiny"}
    study = tiny_study("sync", teachers={"t": {"model": "resnet8"} if feature else {"model": "cnn_small"}},
                       students={"s": vit if "transmix" in mix else cnn},
                       grid={"mix": [mix], "loss": [loss], "mixed_view": list(views), "seeds": [0]},
                       baselines=False)
    if "transmix" in mix and feature and method.taps:
        with pytest.raises(ConfigError, match="students.s.model|grid.loss"):
            specs(study)
        return
    runs = specs(study)
    data = create_dataset("synthetic", train_size=64, test_size=32, img_size=32 if "transmix" in mix else 8)
    engine = Engine().resolve(CPU)
    teacher = build_model(runs[0].run, data).eval()
    members = [Member(r.run, data, engine, teacher) for r in runs[1:]]
    assert len(members) == (1 if mix == "none" else len(views))  # unmixed, the views are one run
    for m in members:
        m.distiller.train()
    group = Lockstep.of(members, data, engine, teacher)
    batches = iter(group.loader)
    with HostReads() as reads:
        for epoch in sorted({1, 1 + max(m.init_epochs for m in members)}):  # a pre-training stage's, the run's
            group.step(*next(batches), epoch, 2)
    assert [m.error for m in members] == [None] * len(members)
    assert reads.seen == set()
