"""`mixkd bench` back ends: the RepDistiller reference loop and the compute lower bound."""

from __future__ import annotations

import itertools
import json
import math

import pandas as pd
import pytest
import torch
from torch import nn

from mixkd.bench.limits import lower_bound_seconds, matmul_peak, training_flops
from mixkd.bench.reference import _epochs, reference_throughput
from mixkd.models import create_model

IMAGE = 3 * 32 * 32


def test_reference_loop_trains_the_student_only(cifar_root):
    torch.manual_seed(0)
    teacher, student = create_model("resnet8", num_classes=100), create_model("resnet8", num_classes=100)
    teacher.train()  # the loop must put it in eval mode itself
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}  # buffers too: BN must not update
    student_before = [p.detach().clone() for p in student.parameters()]

    result = reference_throughput(teacher, student, cifar_root, "cpu", steps=2, warmup=1, workers=1)

    assert result["steps"] == 2 and result["workers"] == 1 and result["images"] == 2 * 64
    assert result["seconds"] > 0 and math.isfinite(result["images_per_s"]) and result["images_per_s"] > 0
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert student.training
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), student_before))


def test_reference_batches_run_on_past_an_epoch():
    assert list(itertools.islice(_epochs([1, 2, 3]), 7)) == [1, 2, 3, 1, 2, 3, 1]


def test_linear_flops_forward_and_backward():
    # FlopCounterMode counts 2 per multiply-add. A lone Linear on images: forward (addmm) plus grad-weight
    # (mm); no grad-input, as the images need none. Bias grads are sums, which count nothing.
    student = nn.Sequential(nn.Flatten(), nn.Linear(IMAGE, 100))
    flops = training_flops(None, student, batch_size=4)
    forward = 2 * IMAGE * 100
    assert flops == {"teacher_forward": 0, "student_train": 2 * forward, "total": 2 * forward}

    # a second layer gets all three: forward, grad-input and grad-weight
    student = nn.Sequential(nn.Flatten(), nn.Linear(IMAGE, 50), nn.ReLU(), nn.Linear(50, 100))
    first, second = 2 * IMAGE * 50, 2 * 50 * 100
    assert training_flops(None, student, batch_size=4)["student_train"] == 2 * first + 3 * second


def test_training_flops_resnet20_and_restores_the_models():
    # resnet20 at 100 classes, conv and fc multiply-adds by hand: stem 3→16 at 32²; 6 convs 16→16 at 32²;
    # 32 and 64 channels at 16² and 8², each stage with a 1×1 stride-2 projection; fc 64→100.
    stem = 32 * 32 * 16 * 27
    macs = (stem + 6 * 1024 * 16 * 144
            + 256 * 32 * (16 * 9 + 5 * 32 * 9 + 16)
            + 64 * 64 * (32 * 9 + 5 * 64 * 9 + 32)
            + 64 * 100)
    assert macs == 40_818_944  # the ~41M MACs (0.04 GMACs) cited for resnet20
    student, teacher = create_model("resnet20", num_classes=100), create_model("resnet8", num_classes=100)
    teacher.train()
    student.eval()
    bn_before = student.bn1.running_mean.clone()
    flops = training_flops(teacher, student, batch_size=2)

    forward = 2 * macs
    assert abs(forward / (2 * 41e6) - 1) < 0.02
    # forward, then grad-weight everywhere and grad-input everywhere but the stem
    assert flops["student_train"] == 3 * forward - 2 * stem
    assert flops["teacher_forward"] > 0 and flops["total"] == flops["teacher_forward"] + flops["student_train"]
    assert teacher.training and not student.training
    assert torch.equal(student.bn1.running_mean, bn_before)
    assert all(p.grad is None for p in student.parameters())


def test_training_flops_forward_matches_a_plain_count():
    from torch.utils.flop_counter import FlopCounterMode

    model = create_model("resnet20", num_classes=100).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert training_flops(model, model, batch_size=1)["teacher_forward"] == counter.get_total_flops() == 81_637_888


def test_matmul_peak_cpu_is_measured():
    peak = matmul_peak("cpu")  # the defaults: fp32, 1024², a fraction of a second
    assert math.isfinite(peak) and peak > 0
    assert lower_bound_seconds(1e6, 1000, 1e9) == 1.0


def test_bench_engine_prints_and_writes_one_object_per_configuration(cifar_root, tmp_path, capsys):
    from mixkd.cli import main

    path = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--steps", "1", "--pairs", "resnet8:resnet8", "--lockstep", "2", "--workers", "0",
                 "--device", "cpu", "--data-root", str(cifar_root), "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "engine lockstep 2" in out and "engine fused 2" in out and "lower bound" in out
    rows = pd.read_json(path)
    assert list(rows["mode"]) == ["reference", "engine", "engine lockstep 2", "engine fused 2"]
    assert list(rows["engine_fuse"]) == [False, False, False, True]
    fused, unfused = rows.loc[3, "images_per_s"], rows.loc[2, "images_per_s"]
    assert rows.loc[3, "ratio_to_lockstep"] == pytest.approx(fused / unfused)
    assert {"pair", "mode", "device", "images_per_s", "ratio_to_reference", "projected_run_s",
            "lower_bound_s", "torch", "date", "command"} <= set(rows.columns)
    assert rows.loc[0, "ratio_to_reference"] == 1.0 and (rows["images_per_s"] > 0).all()
    assert (rows["projected_run_s"] == 240 * 50_000 / rows["images_per_s"]).all()
    assert (rows["lower_bound_s"] > 0).all() and (rows["lower_bound_s"] < rows["projected_run_s"]).all()
    # one shared teacher forward: the bound per run falls with the group's size
    assert rows.loc[2, "lower_bound_s"] < rows.loc[1, "lower_bound_s"] == rows.loc[0, "lower_bound_s"]


def test_bench_rejects_an_unknown_model_in_a_pair(capsys):
    from mixkd.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "--pairs", "resnet56:resnet2O"])
    assert "resnet20" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29's, for TorchCodec
def test_the_device_check_runs_end_to_end_on_the_cpu(tmp_path, monkeypatch):
    """`mixkd bench device-check --quick`: the one call a GPU session makes first, at toy sizes, so it cannot
    rot: its three parts succeed and write what a device call brings back (seven files, one folder)."""
    from mixkd.cli import main

    # synthetic images: with CIFAR-100 found (MIXKD_DATA_ROOT, as CI sets it) its 9 runs would evaluate the
    # 10,000 test images every epoch, 5 minutes on 2 cores
    monkeypatch.delenv("MIXKD_DATA_ROOT", raising=False)

    assert main(["bench", "device-check", "--quick", "--device", "cpu", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.txt", "device-check.json",
                                                          "tests.txt", "train-epochs.csv", "train-runs.csv",
                                                          "train.txt"]
    report = json.loads((tmp_path / "device-check.json").read_text())
    assert all(report[part]["ok"] for part in ("tests", "bench", "loader", "train")) and report["device"] == "cpu"
    assert "decode_jpeg on cpu" in (tmp_path / "bench.txt").read_text()  # the loader's image-folder rows
    assert report["train"]["fused_size"] == 8 and report["train"]["runs"] == 9
    assert "engine fused 2" in (tmp_path / "bench.txt").read_text()
    assert {"torch", "date", "command"} <= report.keys()


def test_bench_without_data_needs_a_root_or_synthetic(capsys, monkeypatch):
    from mixkd.cli import main

    monkeypatch.delenv("MIXKD_DATA_ROOT", raising=False)
    assert main(["bench", "--device", "cpu"]) == 2
    assert "--synthetic" in capsys.readouterr().err
