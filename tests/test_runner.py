"""End to end on tiny data: train, resume, share teachers, tables, determinism, failures, checkpoints."""

import json

import pandas as pd
import pytest
import torch
import yaml

from mixkd import work as work_module
from mixkd.rundir import RunDir
from mixkd.study import load_study
from mixkd.tables import RUN_COLUMNS
from tiny import RECIPE, image_folder, run, tiny_study, write

TINY = tiny_study("tiny", recipe={**RECIPE, "lr": 0.05},
                  teachers={"t": {"model": "cnn_small"}, "t_mix": {"model": "cnn_small", "mix": "mixup"}},
                  grid={"mix": ["none", "mixup"], "temperature": [4], "mixed_view": ["student", "both"],
                        "seeds": [0, 1]})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny study trained once; tests below only read it or rerun it."""
    tmp = tmp_path_factory.mktemp("tiny")
    path, out = write(tmp, TINY), tmp / "out"
    assert run(path, out) == 0
    return path, out


def test_tables_have_the_documented_columns_and_one_row_per_run(finished):
    path, out = finished
    study = load_study(path)
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.columns[:len(RUN_COLUMNS)]) == RUN_COLUMNS
    assert len(runs) == len(study.runs) == runs["run_id"].nunique()
    assert (runs["status"] == "complete").all()
    assert runs["top1_last"].between(0, 1).all()
    parquet = pd.read_parquet(out / "runs.parquet")
    pd.testing.assert_frame_equal(parquet.mask(parquet.isna()), runs, check_dtype=False)  # None → NaN as in CSV
    epochs = pd.read_parquet(out / "epochs.parquet")
    assert len(epochs) == 2 * len(runs)
    for col in ["run_id", "epoch", "lr", "train_loss", "train_ce", "test_top1", "test_loss", "seconds"]:
        assert col in epochs.columns
    kd = epochs[epochs["run_id"].isin(runs.loc[runs["role"] == "student", "run_id"])]
    assert kd["train_kd"].notna().all()
    assert (out / "figures" / "accuracy_by_mix.png").stat().st_size > 0


def test_run_directories_hold_config_epochs_summary_and_checkpoint(finished):
    path, out = finished
    spec = load_study(path).runs[-1]
    d = RunDir(out, spec.run_id).path
    saved = yaml.safe_load((d / "config.yaml").read_text())
    assert (saved["config"], saved["labels"], saved["run_id"]) == (spec.config, spec.labels, spec.run_id)
    assert len((d / "epochs.jsonl").read_text().splitlines()) == 2
    summary = json.loads((d / "summary.json").read_text())
    for key in ["status", "top1_last", "train_seconds", "torch_version", "hostname", "started_at"]:
        assert key in summary
    assert "model" in torch.load(d / "checkpoint.pt", weights_only=True)


def test_second_run_trains_nothing_and_leaves_tables_byte_identical(finished, monkeypatch):
    path, out = finished
    files = ["runs.csv", "runs.parquet", "epochs.parquet", "figures/accuracy_by_mix.png"]
    before = {f: (out / f).read_bytes() for f in files}
    monkeypatch.setattr(work_module, "train_group",
                        lambda *a, **k: pytest.fail("a complete run was trained again"))
    assert run(path, out) == 0
    assert {f: (out / f).read_bytes() for f in files} == before


def test_each_teacher_is_trained_once_before_its_students(tmp_path, monkeypatch):
    calls = []
    real = work_module.train_group

    def spy(runs, *args, **kwargs):
        calls.extend(runs)
        return real(runs, *args, **kwargs)

    monkeypatch.setattr(work_module, "train_group", spy)
    study = {**TINY, "students": ["cnn_tiny", "cnn_small"], "teachers": {"t": {"model": "cnn_small"}},
             "grid": {**TINY["grid"], "seeds": [0]}, "recipe": {**TINY["recipe"], "epochs": 1}}
    assert run(write(tmp_path, study), tmp_path / "out") == 0
    roles = [c.role for c in calls]
    assert roles.count("teacher") == 1 and roles[0] == "teacher"
    teacher_ids = {c.teacher for c in calls if c.distill}
    assert len(teacher_ids) == 1 and roles.count("student") == 2 * 3


def test_same_seed_gives_identical_numbers_on_cpu(finished, tmp_path):
    path, out = finished
    assert run(path, tmp_path / "again") == 0
    a = pd.read_parquet(out / "epochs.parquet").drop(columns="seconds")
    b = pd.read_parquet(tmp_path / "again" / "epochs.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    runs = pd.read_csv(out / "runs.csv")
    assert runs.groupby(["role", "mix", "mixed_view"], dropna=False)["seed"].nunique().max() == 2


def test_a_failing_run_is_recorded_and_the_study_goes_on(tmp_path):
    study = {**TINY, "teachers": {"t": {"model": "cnn_small"}},
             "students": {"ok": {"model": "cnn_tiny"}, "bad": {"model": "cnn_tiny", "recipe": {"lr": 1e30}}},
             "grid": {"mix": ["none"], "seeds": [0]}, "recipe": {**TINY["recipe"], "epochs": 1}}
    path, out = write(tmp_path, study), tmp_path / "out"
    assert run(path, out) == 1
    runs = pd.read_csv(out / "runs.csv")
    failed = runs[runs["status"] == "failed"]
    assert set(failed["name"]) == {"bad"} and (runs.loc[runs["name"] == "ok", "status"] == "complete").all()
    assert failed["error"].str.contains("NonFiniteLoss").all()
    assert run(path, out) == 1  # failed runs are not retried without --retry-failed ...
    assert (pd.read_csv(out / "runs.csv")["finished_at"] == runs["finished_at"]).all()


def test_dry_run_prints_runs_and_trains_nothing(tmp_path, capsys):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    assert run(path, out, "--dry-run") == 0
    printed = capsys.readouterr().out
    assert f"{len(load_study(path).runs)} runs" in printed
    assert not (out / "runs").exists()


def test_a_checkpoint_can_stand_in_for_a_teacher(tmp_path):
    from mixkd.models import create_model

    torch.manual_seed(0)
    torch.save({"model": create_model("cnn_small", 4, 3).state_dict()}, tmp_path / "teacher.pth")
    study = {**TINY, "teachers": {"given": {"model": "cnn_small", "checkpoint": "teacher.pth"}},
             "grid": {"mix": ["mixup"], "seeds": [0]}, "recipe": {**TINY["recipe"], "epochs": 1}}
    path, out = write(tmp_path, study), tmp_path / "out"
    assert run(path, out) == 0
    runs = pd.read_csv(out / "runs.csv")
    teacher = runs[runs["role"] == "teacher"].iloc[0]
    assert teacher["train_seconds"] == 0 and (runs["status"] == "complete").all()
    # a checkpoint that does not fit its architecture stops the study up front: see test_resilience.py


def test_transmix_trains_a_vit_student_end_to_end(tmp_path):
    vit = {"model": "timm/vit_tiny_patch16_224",
           "model_args": {"patch_size": 4, "embed_dim": 16, "depth": 1, "num_heads": 2}}
    study = {**TINY, "teachers": {"t": {"model": "cnn_small"}}, "students": {"vit": vit},
             "grid": {"mix": ["transmix"], "mixed_view": ["both"], "seeds": [0]},
             "recipe": {**TINY["recipe"], "epochs": 1}}
    path, out = write(tmp_path, study), tmp_path / "out"
    assert run(path, out) == 0
    assert (pd.read_csv(out / "runs.csv")["status"] == "complete").all()


def test_an_image_folder_study_trains_end_to_end(tmp_path):
    root = image_folder(tmp_path / "images")  # 3 classes × 20 PNGs of 32×32 in train/ and in val/
    study = {**TINY, "dataset": {"name": "imagefolder", "img_size": 32, "num_workers": 0},
             "teachers": {"t": {"model": "cnn_small"}}, "grid": {"mix": ["mixup"], "seeds": [0]},
             "recipe": {**TINY["recipe"], "epochs": 1}}
    path, out = write(tmp_path, study), tmp_path / "out"
    assert run(path, out, "--data-root", str(root)) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert (runs["status"] == "complete").all() and (runs["images_per_s"] > 0).all()
    assert len(pd.read_parquet(out / "epochs.parquet")) == len(runs)


def test_list_metrics_names_every_metric_a_study_writes(finished, capsys):
    from mixkd.cli import main

    assert main(["list", "metrics"]) == 0
    *lines, ema = capsys.readouterr().out.splitlines()
    assert ema.startswith("ema_<metric>")  # the same metrics of a recipe's EMA of the weights
    listed = [line.split()[0] for line in lines]
    written = set(pd.read_parquet(finished[1] / "metrics.parquet")["metric"])
    assert sorted(listed) == sorted(written) and len(listed) == 23


def test_progress_lines_name_students_by_their_name(tmp_path, capsys):
    study = {**TINY, "teachers": {"t": {"model": "cnn_small"}}, "students": [{"model": "cnn_tiny", "name": "small"}],
             "grid": {"mix": ["none"], "seeds": [0]}, "recipe": {**TINY["recipe"], "epochs": 1}}
    assert run(write(tmp_path, study), tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert " scratch small mix=none seed=0: top1 " in out and " t→small mix=none T=4 " in out


def test_a_log_that_is_no_terminal_hears_from_a_training_group_regularly(tmp_path, capsys, monkeypatch):
    """No progress bar in a log (Slurm, CI): a line per group every HEARTBEAT_SECONDS instead (here: every
    batch), with the epoch, the images/s and the group's ETA."""
    import mixkd.train

    monkeypatch.setattr(mixkd.train, "HEARTBEAT_SECONDS", 0.0)
    study = {**TINY, "teachers": {"t": {"model": "cnn_small"}}, "students": [{"model": "cnn_tiny", "name": "small"}],
             "grid": {"mix": ["none"], "seeds": [0]}, "recipe": {**TINY["recipe"], "epochs": 2}}
    assert run(write(tmp_path, study), tmp_path / "out") == 0
    beats = [line for line in capsys.readouterr().out.splitlines() if " img/s, ETA " in line]
    assert any(line.startswith("  t→small mix=none T=4 ") and ": epoch 2/2, " in line for line in beats)
    assert any(line.startswith("  teacher t mix=none") and ": epoch 1/2, " in line for line in beats)


@pytest.mark.cifar
def test_a_cifar_study_on_a_training_subset_runs_quickly(cifar_root, tmp_path):
    study = {**TINY, "dataset": {"name": "cifar100", "train_size": 500, "val_size": 100},
             "teachers": {"t": {"model": "cnn_small"}}, "grid": {"mix": ["mixup"], "seeds": [0]},
             "recipe": {**TINY["recipe"], "epochs": 1, "batch_size": 64, "eval_batch_size": 100}}
    path, out = write(tmp_path, study), tmp_path / "out"
    assert run(path, out, "--data-root", str(cifar_root)) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert (runs["status"] == "complete").all() and (runs["dataset_train_size"] == 500).all()
    assert (runs["eval_split"] == "val").all()
