"""Surviving kills, sharing a study between runners, retrying failures, and refusing bad input in one line."""

import builtins
import errno
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mixkd import work as work_module
from mixkd.cli import main
from mixkd.errors import MixkdError
from mixkd.models import create_model
from mixkd.rundir import RunDir
from mixkd.study import load_study, parse_study
from tiny import (RECIPE, TIMEOUT, comparable, mixkd_command, poll, run, start, subprocess_env, summaries,
                  tiny_study, write)

TINY = tiny_study("tiny", recipe={**RECIPE, "epochs": 1}, grid={"mix": ["mixup"], "seeds": [0]})
# the scratch and student runs train long enough for a kill to land in the middle of one
LONG = {**TINY, "name": "long", "dataset": {"name": "synthetic", "train_size": 256, "test_size": 64},
        "teachers": {"t": {"model": "cnn_small", "recipe": {"epochs": 2}}},
        "students": {"cnn_tiny": {"model": "cnn_tiny", "recipe": {"epochs": 30}}}}
# --- crash safety -------------------------------------------------------------------------------------------


def test_a_run_killed_with_sigkill_resumes_from_its_checkpoint_to_identical_results(tmp_path):
    path, out, reference = write(tmp_path, LONG), tmp_path / "killed", tmp_path / "reference"
    study = load_study(path)
    uninterrupted = start(path, reference)  # alongside, on the same machine
    victim = start(path, out)

    def mid_run():
        done = {rid for rid, s in summaries(out, study).items() if s}
        return next((rid for rid in summaries(out, study) if rid not in done and done
                     and (RunDir(out, rid).path / "checkpoint.pt").exists()), None)

    killed_run = poll(mid_run, victim, "a finished run and another with a checkpoint")
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(TIMEOUT)
    victim.stdout.close()
    finished_before = {rid: s for rid, s in summaries(out, study).items() if s}
    checkpoint_epoch = RunDir(out, killed_run).training_state()["epoch"]
    assert checkpoint_epoch >= 1 and killed_run not in finished_before

    resumed = subprocess.run(mixkd_command(path, out), env=subprocess_env(), capture_output=True, text=True,
                             timeout=TIMEOUT)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert uninterrupted.wait(TIMEOUT) == 0, uninterrupted.stdout.read()
    uninterrupted.stdout.close()

    after = summaries(out, study)
    assert all(after[rid] == s for rid, s in finished_before.items())  # nothing finished was trained again
    assert after[killed_run]["resumed_from_epoch"] == checkpoint_epoch
    for got, want in zip(comparable(out), comparable(reference)):
        pd.testing.assert_frame_equal(got, want)


def test_ctrl_c_with_workers_fails_no_run_prints_no_traceback_and_the_study_resumes(tmp_path):
    path, out = write(tmp_path, LONG), tmp_path / "out"
    study = load_study(path)
    runner = subprocess.Popen([*mixkd_command(path, out), "--workers", "2"], env=subprocess_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    poll(lambda: any((RunDir(out, r.run_id).path / "checkpoint.pt").exists() for r in study.runs
                     if r.role != "teacher"), runner, "a run other than the teacher with a checkpoint")
    os.killpg(runner.pid, signal.SIGINT)  # Ctrl-C: the terminal interrupts the whole process group
    log = runner.communicate(timeout=TIMEOUT)[0]
    assert runner.returncode == 130 and "Traceback" not in log and "mixkd: interrupted" in log, log
    assert not any(s and s["status"] == "failed" for s in summaries(out, study).values())
    assert run(path, out) == 0


def test_an_epoch_line_cut_short_by_a_kill_is_dropped_and_logged_again(tmp_path):
    spec = parse_study(TINY).runs[0]
    rundir = RunDir(tmp_path, spec.run_id)
    rundir.start(spec)
    rundir.log_epoch({"epoch": 1, "train_loss": 0.5})
    with open(rundir.path / "epochs.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # the append a kill or a full disk interrupted
    assert rundir.read_epochs() == [{"epoch": 1, "train_loss": 0.5}]
    rundir.truncate_epochs(1)  # what resuming from the epoch-1 checkpoint does
    rundir.log_epoch({"epoch": 2, "train_loss": 0.4})
    assert [r["epoch"] for r in rundir.read_epochs()] == [1, 2]


def cut_last_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[:text.rstrip("\n").rindex("\n") + 10])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """The tiny study with 2 epochs a run, trained once: (its file, its output folder), for tests to copy."""
    tmp = tmp_path_factory.mktemp("finished")
    path = write(tmp, {**TINY, "recipe": RECIPE})
    assert run(path, tmp / "out") == 0
    return path, tmp / "out"


@pytest.mark.parametrize("damage, says", [
    (lambda rundir: cut_last_line(rundir.path / "epochs.jsonl"), "epochs.jsonl: line 2 is not an epoch record"),
    (lambda rundir: (rundir.path / "analysis.parquet").unlink(), "analysis.parquet is missing"),
    (lambda rundir: (rundir.path / "epochs.jsonl").write_text('{"epoch": 1, "lr": 0.\n{"epoch": 2}\n'),
     "epochs.jsonl: line 1 is not an epoch record"),
], ids=["epoch-line-cut", "analysis-deleted", "epoch-line-garbled"])
def test_a_complete_run_that_lost_data_is_said_and_done_again(finished, tmp_path, capsys, damage, says):
    path, reference = finished
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    damaged = load_study(path).runs[-1]
    damage(RunDir(out, damaged.run_id))
    assert_one_line_error(capsys, ["report", str(path), "--out", str(out)], says)  # no table silently short
    assert run(path, out) == 0
    assert f"run {damaged.run_id}: " in capsys.readouterr().out
    for got, want in zip(comparable(out), comparable(reference)):
        pd.testing.assert_frame_equal(got, want)
    tables = [pd.read_parquet(folder / "metrics.parquet") for folder in (out, reference)]
    pd.testing.assert_frame_equal(*tables)


def replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def replace_with_file(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("")


@pytest.mark.parametrize("damage, says", [
    (lambda out, rundir: (rundir / "config.yaml").write_text("config: [1"), "config.yaml: not a run config"),
    (lambda out, rundir: (rundir / "config.yaml").write_text("[1]"), "config.yaml: not a run config (holds [1])"),
    (lambda out, rundir: (rundir / "summary.json").write_bytes(b"\xff\xfe"), "summary.json: not a run summary"),
    (lambda out, rundir: (rundir / "summary.json").write_text("[]"), "summary.json: not a run summary (holds []"),
    (lambda out, rundir: replace_with_folder(rundir / ".lock"), ".lock is a folder where mixkd keeps a run's lock"),
    (lambda out, rundir: replace_with_file(rundir), " is a file where mixkd keeps a run's directory"),
    (lambda out, rundir: replace_with_file(out / "runs"), "runs is a file where mixkd keeps its run directories"),
    (lambda out, rundir: replace_with_folder(out / "runs.csv"), "runs.csv is a folder where mixkd writes a table"),
], ids=["config-yaml", "config-list", "summary-bytes", "summary-list", "lock-folder", "run-file", "runs-file",
        "table-folder"])
def test_an_output_folder_mixkd_cannot_use_is_one_line_before_any_run(finished, tmp_path, capsys, damage, says):
    path, reference = finished
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    rundir = RunDir(out, load_study(path).runs[-1].run_id)
    (rundir.path / "summary.json").unlink()  # a run to train
    damage(out, rundir.path)
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert_one_line_error(capsys, run_args(path, out), says)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files  # nothing touched


def test_a_run_resumed_from_a_checkpoint_whose_epoch_line_was_cut_is_trained_again_without_a_gap(finished,
                                                                                                 tmp_path):
    path, reference = finished
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    rundir = RunDir(out, load_study(path).runs[-1].run_id)
    (rundir.path / "summary.json").unlink()  # killed after its last checkpoint (epoch 2) ...
    cut_last_line(rundir.path / "epochs.jsonl")  # ... and epoch 2's line damaged
    assert run(path, out) == 0
    assert [r["epoch"] for r in rundir.read_epochs()] == [1, 2]
    for got, want in zip(comparable(out), comparable(reference)):
        pd.testing.assert_frame_equal(got, want)


def test_the_checkpoint_holds_everything_needed_to_resume(tmp_path):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    assert run(path, out, "--checkpoint-every", "5") == 0  # the last epoch is always checkpointed
    state = torch.load(RunDir(out, load_study(path).runs[0].run_id).path / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "best", "scores", "seconds", "rng"} <= set(state)
    assert set(state["rng"]) == {"torch", "cuda", "loader", "mixing"} and state["epoch"] == 1


def test_runs_table_carries_provenance_and_wall_seconds(tmp_path):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    assert run(path, out) == 0
    runs = pd.read_csv(out / "runs.csv")
    for col in ["mixkd_version", "git_commit", "torch_version", "cuda_version", "cudnn_version", "device_name",
                "hostname", "started_at", "finished_at", "train_seconds", "wall_seconds", "resumed_from_epoch"]:
        assert col in runs.columns, col
    trained = runs[runs["train_seconds"] > 0]
    assert len(trained) and (trained["wall_seconds"] >= trained["train_seconds"]).all()


# --- locking --------------------------------------------------------------------------------------------------


def test_two_runners_on_one_study_train_every_run_exactly_once(tmp_path):
    study_dict = {**LONG, "students": {"cnn_tiny": {"model": "cnn_tiny", "recipe": {"epochs": 4}}},
                  "grid": {"mix": ["none", "mixup"], "seeds": [0, 1]}}
    path, out = write(tmp_path, study_dict), tmp_path / "out"
    study = load_study(path)
    runners = [start(path, out) for _ in range(2)]
    logs = [r.communicate(timeout=TIMEOUT)[0] for r in runners]
    assert [r.returncode for r in runners] == [0, 0], logs
    trained = [m for log in logs for m in re.findall(r"^\[\d+/\d+\] (\w{12}) .*: top1 ", log, re.M)]
    assert sorted(trained) == sorted(r.run_id for r in study.runs)  # each once, by one runner or the other
    assert sum(int(re.search(r"trained (\d+)", log).group(1)) for log in logs) == len(study.runs)
    skipped = [line for log in logs for line in log.splitlines() if ": skipped: " in line]
    says = r"^\[\d+/\d+\] \w{12} .*: skipped: (another runner is training it|already complete, by another runner)$"
    assert all(re.match(says, line) for line in skipped), skipped
    assert all(len(RunDir(out, r.run_id).read_epochs()) == r.run.epochs for r in study.runs)


def test_a_teacher_whose_runner_died_is_taken_over_and_its_students_train(tmp_path, monkeypatch, capsys):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    teacher = load_study(path).runs[0]
    dead_runner = RunDir(out, teacher.run_id)
    dead_runner.start(teacher)  # began training the teacher ...
    lock = dead_runner.claim()
    assert lock.__enter__()
    real_wait = RunDir.wait_until_released

    def dies_while_waited_for(self):  # ... and is killed while this runner waits for it
        lock.__exit__(None, None, None)
        real_wait(self)

    monkeypatch.setattr(RunDir, "wait_until_released", dies_while_waited_for)
    assert run(path, out) == 0
    taken_over = f"teacher run {teacher.run_id} is running and no runner holds it: training it here"
    assert taken_over in capsys.readouterr().out
    assert all(s["status"] == "complete" for s in summaries(out, load_study(path)).values())


def test_the_students_of_a_failed_teacher_stay_pending_and_train_once_it_is_retried(tmp_path, monkeypatch, capsys):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    study = load_study(path)
    real = work_module.train_group

    def teacher_fails(runs, *args, **kwargs):
        if runs[0].is_teacher:
            raise RuntimeError("CUDA error: unspecified launch failure")
        return real(runs, *args, **kwargs)

    monkeypatch.setattr(work_module, "train_group", teacher_fails)
    assert run(path, out) == 1
    assert re.search(r"skipped: teacher run \w{12} is failed: its students stay pending", capsys.readouterr().out)
    statuses = {r.role: RunDir(out, r.run_id).status() for r in study.runs}
    assert statuses == {"teacher": "failed", "scratch": "complete", "student": "pending"}
    monkeypatch.setattr(work_module, "train_group", real)
    assert run(path, out, "--retry-failed") == 0
    assert all(s["status"] == "complete" for s in summaries(out, study).values())


def test_a_complete_teacher_whose_checkpoint_is_gone_is_trained_again_for_its_students(tmp_path):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    assert run(path, out) == 0
    teacher, student = load_study(path).runs[0], load_study(path).runs[-1]
    (RunDir(out, teacher.run_id).path / "checkpoint.pt").unlink()
    (RunDir(out, student.run_id).path / "summary.json").unlink()  # a student still to train
    assert run(path, out) == 0
    assert all(s["status"] == "complete" for s in summaries(out, load_study(path)).values())
    assert (RunDir(out, teacher.run_id).path / "checkpoint.pt").exists()


@pytest.mark.parametrize("damage", [lambda data: b"not a checkpoint", lambda data: data[:len(data) // 2]],
                         ids=["garbage", "truncated"])
def test_an_unreadable_checkpoint_is_said_and_its_run_trained_again_from_the_start(tmp_path, capsys, damage):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    assert run(path, out) == 0
    student = RunDir(out, load_study(path).runs[-1].run_id)
    before = student.read_summary()
    (student.path / "summary.json").unlink()  # a run interrupted after its last checkpoint ...
    checkpoint = student.path / "checkpoint.pt"
    checkpoint.write_bytes(damage(checkpoint.read_bytes()))  # ... which something else damaged
    capsys.readouterr()
    assert run(path, out) == 0
    assert f"{checkpoint}: unreadable (" in capsys.readouterr().out
    after = student.read_summary()
    assert after["status"] == "complete" and after["resumed_from_epoch"] == 0
    assert after["top1_last"] == before["top1_last"]


# --- failures ---------------------------------------------------------------------------------------------------


def test_retry_failed_reruns_only_the_failed_runs(tmp_path, monkeypatch, capsys):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    study = load_study(path)
    real = work_module.train_group

    def flaky(runs, *args, **kwargs):  # e.g. a GPU that fell off the bus: a failure no config change fixes
        if runs[0].role == "student":
            raise RuntimeError("CUDA error: unspecified launch failure")
        return real(runs, *args, **kwargs)

    monkeypatch.setattr(work_module, "train_group", flaky)
    assert run(path, out) == 1
    monkeypatch.setattr(work_module, "train_group", real)
    assert main(["ls", str(path), "--out", str(out)]) == 0
    assert re.search(r"student .* failed", capsys.readouterr().out)
    before = summaries(out, study)
    failed = {rid for rid, s in before.items() if s["status"] == "failed"}
    assert len(failed) == 1 and "launch failure" in before[next(iter(failed))]["error"]

    assert run(path, out) == 1  # not retried without the flag
    assert summaries(out, study) == before
    assert run(path, out, "--retry-failed") == 0
    after = summaries(out, study)
    assert all(after[rid] == s for rid, s in before.items() if rid not in failed)
    assert all(after[rid]["status"] == "complete" for rid in failed)


# --- bad input: one line, non-zero exit, a traceback only with --debug -------------------------------------------


def assert_one_line_error(capsys, args: list[str], *says: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixkd: error: ") and err.count("\n") == 1, err
    assert all(s in err for s in says), err
    with pytest.raises(MixkdError):
        main(["--debug", *args])
    return err


def run_args(path, out, *extra) -> list[str]:
    return ["run", str(path), "--out", str(out), "--device", "cpu", *extra]


def nothing_trained(out: Path) -> bool:
    return not list(out.glob("runs/*/summary.json"))


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["run", "dry-run"])
def test_a_checkpoint_teacher_that_does_not_fit_stops_the_study_before_any_run(tmp_path, capsys, dry_run):
    torch.save({"model": create_model("cnn_small", 10, 3).state_dict()}, tmp_path / "teacher.pth")
    study = {**TINY, "teachers": {"given": {"model": "cnn_small", "checkpoint": "teacher.pth"}}}
    path, out = write(tmp_path, study), tmp_path / "out"
    assert_one_line_error(capsys, run_args(path, out, *dry_run), "teachers.given.checkpoint: ", "teacher.pth",
                          "does not fit SmallCNN", "fc.weight", "(10, 32) vs model (4, 32)")
    assert nothing_trained(out)


def test_a_missing_dataset_stops_the_study_before_any_run(tmp_path, capsys):
    study = {**TINY, "dataset": "cifar100", "teachers": {"t": {"model": "resnet8"}}, "students": ["resnet8"]}
    path, out = write(tmp_path, study), tmp_path / "out"
    (tmp_path / "empty").mkdir()
    assert_one_line_error(capsys, run_args(path, out, "--data-root", str(tmp_path / "empty")),
                          "cifar100", "is missing", "--data-root")
    assert not (out / "runs").exists()


def test_an_output_directory_under_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert_one_line_error(capsys, run_args(write(tmp_path, TINY), tmp_path / "file" / "sub"),
                          "cannot write to the output directory", "file/sub", "Not a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway; "
                                              "test_an_output_directory_under_a_file_is_one_line covers the case")
def test_a_read_only_output_directory_is_one_line(tmp_path, capsys):
    (tmp_path / "ro").mkdir(mode=0o500)
    assert_one_line_error(capsys, run_args(write(tmp_path, TINY), tmp_path / "ro"),
                          "cannot write to the output directory", "Permission denied")


def test_a_full_disk_stops_the_study_in_one_line_and_the_run_resumes_later(tmp_path, capsys, monkeypatch):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    real_open = builtins.open

    def full_disk_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("epochs.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", full_disk_open)
    assert_one_line_error(capsys, run_args(path, out), "no space left on device writing", "epochs.jsonl")
    assert nothing_trained(out)  # the run is not marked failed: there is nothing wrong with it
    monkeypatch.setattr(builtins, "open", real_open)
    assert run(path, out) == 0


class FullDisk:
    """A file on a disk that fills up after `room` bytes: the write that does not fit fails as write(2) does."""

    def __init__(self, file, room: int = 1024):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()


def test_a_full_disk_while_saving_a_checkpoint_stops_the_study_and_leaves_every_run_resumable(tmp_path, capsys,
                                                                                               monkeypatch):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    real_fdopen = os.fdopen

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        return FullDisk(file) if "/.checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}") else file

    monkeypatch.setattr(os, "fdopen", fdopen)
    assert_one_line_error(capsys, run_args(path, out), "no space left on device writing", "checkpoint.pt")
    assert nothing_trained(out)  # the teacher is not failed, so neither are its students once space is freed
    monkeypatch.setattr(os, "fdopen", real_fdopen)
    assert run(path, out) == 0


def test_files_are_written_with_the_mode_the_umask_gives(tmp_path):
    previous = os.umask(0o002)  # a group sharing results on a cluster filesystem
    try:
        rundir = RunDir(tmp_path, "run")
        rundir.write_summary({"status": "complete"})
        rundir.save_checkpoint({"model": {}})
    finally:
        os.umask(previous)
    for name in ("summary.json", "checkpoint.pt"):
        assert (rundir.path / name).stat().st_mode & 0o777 == 0o664, name


def test_a_run_directory_whose_config_no_longer_matches_its_id_is_refused(tmp_path, capsys):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    assert run(path, out) == 0
    spec = load_study(path).runs[-1]
    saved = RunDir(out, spec.run_id).path / "config.yaml"
    content = yaml.safe_load(saved.read_text())
    content["config"]["recipe"]["lr"] = 0.1  # as if mixkd's default had been 0.1 when it was trained
    saved.write_text(yaml.safe_dump(content))
    assert_one_line_error(capsys, run_args(path, out), f"run {spec.run_id}", "recipe.lr=0.1", "0.05")


def test_a_renamed_study_still_finds_its_results(tmp_path, capsys):
    path, out = write(tmp_path, TINY), tmp_path / "out"
    assert run(path, out) == 0
    renamed = write(tmp_path, {**TINY, "name": "tiny_renamed"}, "renamed.yaml")
    capsys.readouterr()
    assert run(renamed, out) == 0
    assert "trained 0" in capsys.readouterr().out
    assert (pd.read_csv(out / "runs.csv")["study"] == "tiny_renamed").all()
