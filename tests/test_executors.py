"""Executors: worker processes and Ray train the same runs to the same numbers as one process, teachers first."""

import os
from multiprocessing import get_context

import pandas as pd
import pytest

from mixkd.cli import main
from mixkd.compare import first_difference
from mixkd.executors import gpus_per_task, take_a_gpu
from mixkd.study import Resources, load_study
from tiny import run, tiny_study, write

STUDY = tiny_study("executors", grid={"mix": ["none", "mixup"], "temperature": [4], "mixed_view": ["student"],
                                      "seeds": [0]})


def assert_same_tables(a, b):
    assert first_difference(a, b) is None


def assert_teachers_finished_first(out):
    runs = pd.read_csv(out / "runs.csv").set_index("run_id")
    students = runs[runs["role"] == "student"]
    assert len(students) and (students["started_at"] >= runs.loc[students["teacher_id"], "finished_at"].values).all()


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sequential")
    path = write(tmp, STUDY)
    assert run(path, tmp / "out") == 0
    return path, tmp / "out"


def test_worker_processes_give_the_same_tables_as_one_process(sequential, tmp_path):
    path, reference = sequential
    assert run(path, tmp_path / "out", "--workers", "2") == 0
    assert_same_tables(reference, tmp_path / "out")
    assert_teachers_finished_first(tmp_path / "out")


def test_ray_gives_the_same_tables_as_one_process(sequential, tmp_path):
    import ray  # in the dev extra: CI must run this test, not skip it

    path, reference = sequential
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert run(path, tmp_path / "out", "--executor", "ray") == 0
    finally:
        ray.shutdown()
    assert_same_tables(reference, tmp_path / "out")
    assert_teachers_finished_first(tmp_path / "out")


@pytest.mark.parametrize("args, says", [
    (["--executor", "rey"], ["unknown executor 'rey'", "did you mean ray"]),
    (["--address", "auto"], ["--address", "needs --executor ray"]),
    (["--executor", "ray", "--workers", "2"], ["--workers is for --executor local"]),
])
def test_executor_options_that_do_not_fit_are_one_line_errors(tmp_path, capsys, args, says):
    assert run(write(tmp_path, STUDY), tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and all(s in err for s in says)
    assert not (tmp_path / "out" / "runs").exists()


@pytest.mark.parametrize("args", [["--address", "auto"], ["--executor", "ray", "--workers", "2"]])
def test_executor_options_that_do_not_fit_are_refused_with_nothing_to_do_too(sequential, capsys, args):
    path, finished = sequential
    assert run(path, finished, *args) == 2
    assert capsys.readouterr().err.startswith("mixkd: error: --")


def test_resources_are_validated_and_change_no_run_id(tmp_path):
    ids = [r.run_id for r in load_study(write(tmp_path, STUDY)).runs]
    path = write(tmp_path, {**STUDY, "resources": {"gpus_per_run": 0.25, "cpus_per_run": 2}})
    study = load_study(path)
    assert [r.run_id for r in study.runs] == ids and study.file.resources.gpus_per_run == 0.25
    with pytest.raises(Exception, match=r"resources\.gpus: unknown key; allowed: gpus_per_run, cpus_per_run"):
        load_study(write(tmp_path, {**STUDY, "resources": {"gpus": 1}}))
    with pytest.raises(Exception, match=r"resources\.cpus_per_run: must be > 0"):
        load_study(write(tmp_path, {**STUDY, "resources": {"cpus_per_run": 0}}))


@pytest.mark.parametrize("gpus_per_run, device, cluster_gpus, asked", [
    (None, "auto", 8, 1.0), (None, "cuda", 8, 1.0), (None, "cpu", 8, 0.0), (None, "auto", 0, 0.0),
    (0.25, "auto", 8, 0.25), (0.0, "auto", 8, 0.0)])
def test_ray_tasks_ask_for_a_gpu_where_the_cluster_has_them_unless_told(gpus_per_run, device, cluster_gpus, asked):
    assert gpus_per_task(Resources(gpus_per_run=gpus_per_run), device, cluster_gpus) == asked


def test_local_workers_take_the_visible_gpus_in_turn(monkeypatch):
    counter = get_context("spawn").Value("i", 0)
    taken = []
    for _ in range(5):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        take_a_gpu(counter, ["2", "5"])  # as CUDA_VISIBLE_DEVICES=2,5 named them
        taken.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert taken == ["2", "5", "2", "5", "2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    take_a_gpu(counter, [])  # no GPU: nothing to choose, nothing set
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_compare_names_the_first_difference(sequential, tmp_path, capsys):
    import shutil

    _, out = sequential
    assert main(["compare", str(out), str(out)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    epochs = pd.read_parquet(copy / "epochs.parquet")
    epochs.loc[3, "test_top1"] += 1e-9  # any change in the last bits is a difference
    epochs.to_parquet(copy / "epochs.parquet", index=False)
    capsys.readouterr()
    assert main(["compare", str(out), str(copy)]) == 1
    said = capsys.readouterr().out
    assert said.startswith(f"differ: epochs: run {epochs.loc[3, 'run_id']}, test_top1:"), said
    assert main(["compare", str(out), str(tmp_path / "absent")]) == 2
    assert "no such table" in capsys.readouterr().err
