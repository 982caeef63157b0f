"""Training on real and tiny data: the loop learns, and every registered mixer runs through it."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import yaml

from mixkd.cli import main
from mixkd.data import create_dataset
from mixkd.mixing import MIXERS
from mixkd.models import create_model


def test_resnet8_learns_in_one_epoch_on_2000_cifar100_images(cifar_root):
    torch.manual_seed(0)
    full = create_dataset("cifar100", root=cifar_root)
    data = dataclasses.replace(full, train_x=full.train_x[:2000], train_y=full.train_y[:2000])
    model = create_model("resnet8", num_classes=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def train_loss() -> float:
        model.eval()
        with torch.no_grad():
            return sum(F.cross_entropy(model(x), y, reduction="sum").item()
                       for x, y in data.eval_loader.__func__(dataclasses.replace(data, eval_x=data.train_x,
                                                                                 eval_y=data.train_y), 500, "cpu")) / 2000

    before = train_loss()
    model.train()
    for x, y, _ in data.train_loader(64, torch.device("cpu"), seed=0):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = train_loss()
    assert before == pytest.approx(4.6, abs=0.3)  # ≈ log(100): an untrained 100-way classifier
    assert after < before - 0.1


# Every mixer with the interpolated-teacher view; `both` where the teacher's forward differs (hidden-state
# mixing, attention relabelling). Each view's routing is tested exactly in test_distill.py.
@pytest.mark.parametrize("mixer, view", [(m, "student") for m in MIXERS.names()] +
                         [("manifold_mixup", "both"), ("transmix", "both"), ("mixup_transmix", "both")])
def test_every_mixer_trains_through_the_loop(mixer, view, tmp_path):
    student = ({"model": "timm/vit_tiny_patch16_224",
                "model_args": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}
               if "transmix" in mixer else {"model": "cnn_tiny"})
    study = {"name": "mixers", "dataset": {"name": "synthetic", "train_size": 64, "test_size": 16},
             "recipe": {"epochs": 1, "batch_size": 32, "schedule": "constant"},
             "teachers": {"t": {"model": "cnn_small"}}, "students": {"s": student},
             "grid": {"mix": [mixer], "mixed_view": [view], "seeds": [0]}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
