"""The Distiller: who sees the mixed images, and a teacher that never changes."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mixkd.config import VIEWS
from mixkd.distill import Distiller, TeacherForward
from mixkd.losses import KD, create_loss
from mixkd.mixing import Mixer
from mixkd.models import create_model

K = 4


def nets(seed=0):
    torch.manual_seed(seed)
    return create_model("cnn_tiny", K, in_chans=3), create_model("cnn_small", K, in_chans=3)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, K, (n,), generator=g)


class Recorder(torch.nn.Module):
    """Wraps a network and remembers the exact tensors it was called with."""

    def __init__(self, net):
        super().__init__()
        self.net, self.inputs = net, []

    def forward(self, x, **kw):
        self.inputs.append(x)
        return self.net(x, **kw)


def mixed(x, y, seed=0):
    return Mixer("mixup", {"alpha": 1.0})(x, y, np.random.default_rng(seed))


def test_both_gives_teacher_and_student_the_identical_tensor():
    s, t = nets()
    student, teacher = Recorder(s), Recorder(t)
    x, y = batch()
    mix = mixed(x, y)
    Distiller(student, teacher, KD(4.0), VIEWS["both"], K).forward_train(x, y, mix, 1)
    assert student.inputs[0] is teacher.inputs[0] is mix.x


@pytest.mark.parametrize("view, student_mixed, teacher_mixed", [
    ("none", False, False), ("student", True, False), ("teacher", False, True), ("both", True, True)])
def test_views_route_clean_and_mixed_batches(view, student_mixed, teacher_mixed):
    s, t = nets()
    student, teacher = Recorder(s), Recorder(t)
    x, y = batch()
    mix = mixed(x, y)
    Distiller(student, teacher, KD(4.0), VIEWS[view], K).forward_train(x, y, mix, 1)
    assert student.inputs[0] is (mix.x if student_mixed else x)
    assert teacher.inputs[0] is (mix.x if teacher_mixed else x)


def test_student_view_interpolates_teacher_probabilities_with_the_mix():
    s, t = nets()
    t.eval()
    x, y = batch()
    mix = mixed(x, y)
    seen = {}

    class Spy(KD):
        def __call__(self, inp):
            seen["p"] = inp.teacher_probs
            seen["targets"] = inp.targets
            return super().__call__(inp)

    Distiller(s, t, Spy(4.0), VIEWS["student"], K).forward_train(x, y, mix, 1)
    with torch.no_grad():
        p = F.softmax(t(x) / 4.0, dim=1)
    lam = mix.lam[:, None]
    expected = lam * p + (1 - lam) * p[mix.index]
    torch.testing.assert_close(seen["p"], expected)
    torch.testing.assert_close(seen["p"].sum(1), torch.ones(len(y)))
    torch.testing.assert_close(seen["targets"].sum(1), torch.ones(len(y)))


def test_teacher_stays_in_eval_mode_and_is_never_updated():
    s, t = nets()
    t.train()  # even a teacher handed over in train mode
    before = copy.deepcopy(t.state_dict())  # parameters and BatchNorm running statistics
    d = Distiller(s, t, create_loss("kd", temperature=4.0), VIEWS["both"], K)
    opt = torch.optim.SGD(d.parameters(), lr=0.5, momentum=0.9)
    x, y = batch(16)
    for step in range(3):
        d.train()
        assert not t.training and s.training
        _, parts = d.forward_train(x, y, mixed(x, y, step), 1)
        opt.zero_grad()
        sum(parts.values()).backward()
        opt.step()
    assert all(p.grad is None for p in t.parameters())
    for key, value in t.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(p is q for p in d.parameters() for q in t.parameters())


def test_kd_loss_parts_are_weighted_and_named():
    s, t = nets()
    x, y = batch()
    _, parts = Distiller(s, t, KD(4.0, ce_weight=0.1, kd_weight=0.9), VIEWS["none"], K).forward_train(
        x, y, Mixer("none")(x, y, np.random.default_rng(0)), 1)
    assert set(parts) == {"ce", "kd"}
    with torch.no_grad():
        t.eval()
        logits = s(x)
        kl = F.kl_div(F.log_softmax(logits / 4, 1), F.softmax(t(x) / 4, 1), reduction="batchmean")
    torch.testing.assert_close(parts["kd"], 0.9 * 16 * kl, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(parts["ce"], 0.1 * F.cross_entropy(logits, y), rtol=1e-4, atol=1e-6)


def test_teacher_is_in_eval_mode_from_the_start():
    s, t = nets()
    t.train()
    Distiller(s, t, KD(4.0), VIEWS["both"], K)
    assert not t.training


class StaticOutput(torch.nn.Module):
    """Returns its logits in one buffer that every call overwrites, as a CUDA-graphed module does."""

    def __init__(self, net):
        super().__init__()
        self.net, self.out = net, None

    def forward(self, x, **kw):
        logits = self.net(x, **kw)
        if self.out is None:
            self.out = torch.empty_like(logits)
        return self.out.copy_(logits)


def test_cached_teacher_logits_survive_the_teachers_next_call():
    _, t = nets()
    x, y = batch()
    mix = mixed(x, y)
    teacher = StaticOutput(t.eval())
    out = TeacherForward(teacher, x, mix)
    clean = out.logits(mixed=False)
    expected = t(x).detach()
    out.logits(mixed=True)  # a later call, into the same buffer
    torch.testing.assert_close(clean, expected)
