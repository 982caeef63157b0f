"""The typed run: a frozen tree whose plain form is what ids hash, and one way to ask a run what it is."""

import pickle
from dataclasses import FrozenInstanceError, replace

import pytest
import torch

from mixkd.config import NO_MIX, Labels, Params, RunSpec, run_id
from mixkd.models import create_model
from mixkd.study import parse_study
from tiny import tiny_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("ckpt") / "t.pth"
    torch.save({"model": create_model("cnn_small", num_classes=4, in_chans=3, img_size=8).state_dict()}, checkpoint)
    return parse_study(tiny_study("typed", teachers={"t": {"model": "cnn_small"},
                                                     "given": {"model": "cnn_small", "checkpoint": str(checkpoint)}},
                                  grid={"mix": ["none", {"name": "manifold_mixup", "stages": [0, 1]}],
                                        "loss": ["kd", "dkd"], "seeds": [0, 1]}))


def test_a_run_is_what_its_plain_config_says_and_round_trips(study):
    for spec in study.runs:
        assert spec.run_id == run_id(spec.config)
        assert RunSpec.from_dicts(spec.config, spec.labels) == spec
        assert pickle.loads(pickle.dumps(spec)) == spec  # what ships to worker processes


def test_one_way_to_ask_a_run_what_it_is(study):
    by_role = {role: [s.run for s in study.runs if s.role == role] for role in ("teacher", "scratch", "student")}
    assert all(r.is_teacher and r.distill is None and r.teacher is None for r in by_role["teacher"])
    imported = [r for r in by_role["teacher"] if r.imported]
    assert len(imported) == 1 and imported[0].recipe is None and imported[0].seed is None
    assert imported[0].eval_batch_size == 500 and imported[0].epochs == 0
    assert all(not r.is_teacher and r.distill is None and r.loss.name == "ce" for r in by_role["scratch"])
    assert all(r.distill is not None and r.teacher == r.distill.teacher for r in by_role["student"])
    student = by_role["student"][0]
    with pytest.raises(ValueError, match="student run without a teacher"):
        replace(student, distill=None)
    with pytest.raises(ValueError, match="only a teacher is imported"):
        replace(student, checkpoint_sha256="0" * 64)


def test_the_tree_is_frozen_and_hashable(study):
    run = next(s.run for s in study.runs if s.run.mix.name == "manifold_mixup")
    with pytest.raises(FrozenInstanceError):
        run.seed = 3
    with pytest.raises(TypeError):
        run.mix.params["stages"] = (0,)
    assert run.mix.params["stages"] == (0, 1) and run.mix.kwargs()["stages"] == [0, 1]  # lists, as studies give
    assert len({s.run for s in study.runs}) == len(study.runs) and NO_MIX.as_dict() == {"name": "none", "prob": 1.0}
    assert Params({"a": [1, {"b": [2]}]}).thaw() == {"a": [1, {"b": [2]}]}
    assert Labels("s", teacher="t", student="s").as_dict() == {"name": "s", "teacher": "t", "student": "s"}
