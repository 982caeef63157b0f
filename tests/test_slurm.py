"""The Slurm executor without a cluster: submitit's local cluster trains a study to the local executor's
numbers, a preempted job is requeued and resumes, a killed one resumes on the next run; the sbatch files it
writes for a real Slurm (a stand-in `sbatch` on the PATH) ask for what the command line says. A run across
devices is a job with a task per rank: on the local cluster it trains the local executor's numbers and resumes
when preempted; its ranks train only once rank 0 says so, and a failed rank's error is the run's."""

import contextlib
import multiprocessing
import os
import signal
import stat
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from tiny import RECIPE, TIMEOUT, poll, run, start, summaries, tiny_study, write

from mixkd.cli import main
from mixkd.compare import first_difference
from mixkd.engine import lockstep_groups
from mixkd.errors import MixkdError
from mixkd.executors import SlurmOptions
from mixkd.executors.slurm import LIVE, GroupJob, JobLog, _asks, _executor, _submit, _submitted, minutes
from mixkd.ranks import RankFailed, Ranks, Tasks, free_port
from mixkd.rundir import RunDir
from mixkd.study import load_study
from mixkd.work import Job, RunContext

STUDY = {"name": "slurmy", "dataset": {"name": "synthetic", "train_size": 256, "test_size": 64},
         "recipe": {"epochs": 1, "batch_size": 32, "schedule": "cosine", "eval_batch_size": 64},
         "teachers": {"t": {"model": "cnn_small", "recipe": {"epochs": 2}}},
         "students": {"cnn_tiny": {"model": "cnn_tiny", "recipe": {"epochs": 24}}},
         "grid": {"mix": ["mixup"], "seeds": [0]}, "baselines": False}
LOCAL = ("--executor", "slurm", "--cluster", "local", "--time", "30")


@pytest.mark.parametrize("text, expected", [("90", 90), ("01:30", 90), ("1:00:30", 61), ("1-00", 1440),
                                            ("1-02:03", 1563), ("0:00:01", 1)])
def test_slurm_time_formats_in_minutes(text, expected):
    assert minutes(text) == expected


@pytest.mark.parametrize("text", ["abc", "0", "1:2:3:4", ""])
def test_a_bad_time_is_one_line(text):
    with pytest.raises(MixkdError, match="--time"):
        minutes(text)


@pytest.mark.parametrize("extra, says", [
    (("--executor", "slurm", "--time", "10"), "sbatch is not on the PATH"),
    (("--executor", "slurm", "--cluster", "local"), "needs --time"),
    (("--partition", "gpu"), "are for --executor slurm"),
    (("--executor", "slurm", "--time", "10", "--slurm", "account"), "expected KEY=VALUE"),
    (("--executor", "slurm", "--cluster", "local", "--time", "10", "--workers", "2"), "--workers"),
])
def test_slurm_options_that_cannot_work_are_one_line_before_any_run(tmp_path, capsys, monkeypatch, extra, says):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    path = write(tmp_path, STUDY)
    assert run(path, tmp_path / "out", *extra) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "runs").exists()


def test_group_job_requeues_itself_and_returns_an_input_error_as_its_line(tmp_path, monkeypatch):
    study = load_study(write(tmp_path, STUDY))
    job = GroupJob(Job(study, tmp_path / "out", device="cpu"), study.runs[:1])
    again = job.checkpoint()
    assert again.function is job and again.args == ()

    def refuses(*_):
        raise MixkdError("no dataset here")
    monkeypatch.setattr("mixkd.executors.slurm.run_in_worker", refuses)
    assert job() == {"error": "no dataset here"}


def fake_slurm(bin_dir, capture):
    """`sbatch` that keeps each script it is given and answers a job id; `srun` (submitit looks for it)."""
    bin_dir.mkdir()
    scripts = {"sbatch": f'n=$(ls {capture} | wc -l); cp "$1" {capture}/$n.sh; echo "Submitted batch job $((100 + n))"',
               "srun": "exit 0"}
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(stat.S_IRWXU)


def test_the_sbatch_scripts_ask_for_what_the_command_line_says(tmp_path, monkeypatch):
    capture = tmp_path / "scripts"
    capture.mkdir()
    fake_slurm(tmp_path / "bin", capture)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    study = load_study(write(tmp_path, {**STUDY, "grid": {"mix": ["none", "mixup", "cutmix"], "seeds": [0, 1]},
                                        "engine": {"lockstep": 2}, "resources": {"cpus_per_run": 3}}))
    ctx = RunContext(Job(study, tmp_path / "out", device="auto"))
    options = SlurmOptions(partition="gpu", time="1-02:00", array_parallelism=4, extra=(("account", "lab"),))
    executor, gpus = _executor(options, ctx)
    assert gpus == 1  # --device auto: a GPU a job, where the runs may use one
    groups = lockstep_groups(study.runs, ctx.engine.lockstep)
    teachers = [g for g in groups if g[0].role == "teacher"]
    students = [g for g in groups if g[0].role != "teacher"]
    log = JobLog(ctx.out)
    first = _submit(executor, teachers, ctx.job, log, after=[])
    second = _submit(executor, students, ctx.job, log, after=[j.job_id for j in first])

    one, two = (capture / "0.sh").read_text(), (capture / "1.sh").read_text()
    for script in (one, two):
        for line in ("--partition=gpu", "--time=1560", "--gpus-per-node=1", "--cpus-per-task=3", "--account=lab",
                     "--job-name=mixkd-slurmy"):
            assert f"#SBATCH {line}\n" in script, script
    assert "--dependency" not in one and "#SBATCH --dependency=afterany:100\n" in two
    assert f"#SBATCH --array=0-{len(students) - 1}%4\n" in two and len(students) == 6  # 12 students, 2 a group
    # every run's job is on record, so `mixkd ls` can show it and a rerun leaves queued runs alone
    jobs = log.latest()
    assert {jobs[s.run_id][0] for g in students for s in g} == {j.job_id for j in second}
    assert len(jobs) == sum(map(len, groups))


def test_job_states_come_from_one_sacct_call_and_say_which_runs_are_still_queued(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sacct").write_text("#!/bin/sh\necho \"$@\" > {}\nprintf 'JobID|State\\n200_0|COMPLETED\\n"
                                   "200_[1-2]|PENDING\\n201|RUNNING\\n201.batch|RUNNING\\n'\n"
                                   .format(tmp_path / "asked"))
    (bin_dir / "sacct").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    log = JobLog(tmp_path, "slurm")
    log.add([("a", "200_0"), ("b", "200_1"), ("c", "200_2"), ("d", "201"), ("e", "202_0")])
    log.path.write_text(log.path.read_text() + '{"run_id": "f", "job_')  # a line cut by a kill
    assert log.states() == {"a": ("200_0", "COMPLETED"), "b": ("200_1", "PENDING"), "c": ("200_2", "PENDING"),
                            "d": ("201", "RUNNING"), "e": ("202_0", "unknown")}
    assert log.live() == {"b": "200_1", "c": "200_2", "d": "201"}
    assert (tmp_path / "asked").read_text().split().count("-j") == 3
    local = JobLog(tmp_path / "local", "local")
    local.add([("g", str(os.getpid()))])
    assert local.live() == {"g": str(os.getpid())} and "RUNNING" in LIVE


def task_of(out) -> int:
    """The process that trains the study's last submitted job: the local cluster's job id is its
    controller's process id, and the task is the controller's child."""
    controller = JobLog(out).latest()[max(JobLog(out).latest())][0]
    children = open(f"/proc/{controller}/task/{controller}/children").read().split()
    return int(children[0])


def test_on_submitits_local_cluster_a_preempted_job_resumes_and_a_killed_one_resumes_on_the_next_run(tmp_path,
                                                                                                   capsys):
    path = write(tmp_path, STUDY)
    study = load_study(path)
    student = next(r.run_id for r in study.runs if r.role == "student")
    reference, preempted, killed = tmp_path / "reference", tmp_path / "preempted", tmp_path / "killed"
    assert run(path, reference) == 0

    def mid_run(out):
        return lambda: len(RunDir(out, student).read_epochs()) >= 3 and os.path.exists(f"{out}/slurm/jobs.jsonl")

    # preempted: Slurm's signal (USR2) to the job's task; submitit requeues it and the run resumes
    runner = start(path, preempted, *LOCAL)
    poll(mid_run(preempted), runner, "a student's third epoch")
    os.kill(task_of(preempted), signal.SIGUSR2)
    log = runner.communicate(timeout=TIMEOUT)[0]
    assert runner.returncode == 0, log
    resumed = summaries(preempted, study)[student]
    assert 0 < resumed["resumed_from_epoch"] < 24
    assert resumed["cluster_job"] == JobLog(preempted).latest()[student][0]  # the job that trained it, on record
    assert first_difference(preempted, reference) is None  # `mixkd compare`: the same tables

    # killed: the job ends without its runs, which stay to do, and the next run resumes them
    runner = start(path, killed, *LOCAL)
    poll(mid_run(killed), runner, "a student's third epoch")
    os.kill(task_of(killed), signal.SIGKILL)
    log = runner.communicate(timeout=TIMEOUT)[0]
    assert runner.returncode == 0 and "ended without finishing its runs" in log, log
    assert summaries(killed, study)[student] is None
    assert main(["ls", str(path), "--out", str(killed)]) == 0
    assert str(JobLog(killed).latest()[student][0]) in capsys.readouterr().out  # its last job is shown
    checkpoint = RunDir(killed, student).training_state()["epoch"]  # 2 or 3: the kill may beat epoch 3's save
    assert run(path, killed, *LOCAL) == 0
    assert summaries(killed, study)[student]["resumed_from_epoch"] == checkpoint >= 2
    assert first_difference(killed, reference) is None



def test_runs_whose_job_is_still_queued_or_running_are_not_submitted_again(tmp_path, capsys):
    study = load_study(write(tmp_path, STUDY))
    job = Job(study, tmp_path / "out", device="cpu")
    JobLog(job.out, "local").add([(r.run_id, str(os.getpid())) for r in study.runs])  # this process: alive
    groups = lockstep_groups(study.runs, 8)
    assert list(_submitted(None, groups, job, "local", {})) == []  # nothing to submit, nothing to wait for
    assert f"{len(study.runs)} runs are in jobs still queued or running ({os.getpid()})" in capsys.readouterr().out


def submitted_scripts(tmp_path, monkeypatch, students: dict, options: SlurmOptions) -> list[str]:
    """The sbatch scripts a study of a teacher and `students` is submitted as, to the stand-in Slurm."""
    capture = tmp_path / "scripts"
    capture.mkdir()
    fake_slurm(tmp_path / "bin", capture)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("mixkd.executors.slurm._results", lambda jobs: iter(()))  # no waiting on fake jobs
    study = load_study(write(tmp_path, {**STUDY, "students": students, "resources": {"cpus_per_run": 3}}))
    ctx = RunContext(Job(study, tmp_path / "out", device="auto"))
    executor, gpus = _executor(options, ctx)
    groups = lockstep_groups(study.runs, 8)
    assert list(_submitted(executor, groups, ctx.job, "slurm", _asks(groups, gpus, 3, options))) == []
    return [(capture / f"{n}.sh").read_text() for n in range(len(list(capture.iterdir())))]


def test_runs_across_devices_go_in_arrays_of_their_own_with_a_task_per_rank(tmp_path, monkeypatch):
    teachers, students = submitted_scripts(tmp_path, monkeypatch, {"wide": {"model": "cnn_tiny", "recipe": {
        "epochs": 2, "devices": 2}}}, SlurmOptions(time="10"))
    assert "#SBATCH --gpus-per-node=1\n" in teachers and "#SBATCH --cpus-per-task=3\n" in teachers
    assert "--kill-on-bad-exit" not in teachers
    for line in ("--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=3",
                 "--dependency=afterany:100"):  # no --gpus-per-node: all its ranks on one node, a GPU each
        assert f"#SBATCH {line}\n" in students, students
    assert "srun --unbuffered" in students and "--kill-on-bad-exit=1" in students


def test_a_run_across_more_devices_than_gpus_per_node_spans_nodes_and_one_failed_rank_ends_them(tmp_path,
                                                                                               monkeypatch):
    wider = {"model": "cnn_tiny", "recipe": {"epochs": 2, "devices": 4}}
    teachers, students = submitted_scripts(tmp_path, monkeypatch, {"wider": wider},
                                           SlurmOptions(time="10", gpus_per_node=2))
    assert "#SBATCH --gpus-per-node=1\n" in teachers  # a group on one device asks one GPU of the node's 2
    for line in ("--nodes=2", "--ntasks-per-node=2", "--gpus-per-node=2", "--cpus-per-task=3"):
        assert f"#SBATCH {line}\n" in students, students
    srun = next(line for line in students.splitlines() if line.startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun.split()


def test_a_run_whose_devices_do_not_fill_whole_nodes_is_one_line_before_anything_is_submitted(tmp_path,
                                                                                             monkeypatch, capsys):
    capture = tmp_path / "scripts"
    capture.mkdir()
    fake_slurm(tmp_path / "bin", capture)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    path = write(tmp_path, {**STUDY, "students": {"wider": {"model": "cnn_tiny", "recipe": {"devices": 4}}}})
    assert run(path, tmp_path / "out", "--executor", "slurm", "--time", "10", "--gpus-per-node", "3") == 2
    err = capsys.readouterr().err
    assert "recipe.devices: 4" in err and "--gpus-per-node 3" in err and len(err.strip().splitlines()) == 1, err
    assert not list(capture.iterdir()) and not (tmp_path / "out" / "runs").exists()


# --- one run across devices as a job with a task per rank -------------------------------------------------------

# tests/test_ddp.py's model: LayerNorm, no BatchNorm, so 2 ranks train what one process trains
VIT = {"model": "timm/vit_tiny_patch16_224", "model_args": {"patch_size": 4, "embed_dim": 16, "depth": 1,
                                                            "num_heads": 2}}
RANKS_STUDY = tiny_study("ranks", recipe={**RECIPE, "epochs": 20},
                         students={"two": {**VIT, "recipe": {"devices": 2}}}, baselines=False)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The study of a 2-rank run, trained by the local executor (its launcher spawns the ranks)."""
    tmp = tmp_path_factory.mktemp("ranks")
    path, reference = write(tmp, RANKS_STUDY), tmp / "reference"
    assert run(path, reference) == 0
    study = load_study(path)
    return path, reference, study, next(r.run_id for r in study.runs if r.role == "student")


def test_on_submitits_local_cluster_a_run_across_devices_is_a_task_per_rank_with_the_local_numbers(two_ranks,
                                                                                                  tmp_path):
    path, reference, study, two = two_ranks
    out = tmp_path / "out"
    assert run(path, out, *LOCAL) == 0
    assert summaries(out, study)[two]["status"] == "complete"
    assert first_difference(out, reference) is None  # `mixkd compare`: the same tables
    job = JobLog(out).latest()[two][0]
    assert {p.name for p in (out / "slurm" / job).glob("*_log.out")} == {f"{job}_0_log.out", f"{job}_1_log.out"}


def task_of_rank(out, run_id: str, rank: int) -> int:
    """The process of rank `rank` of run `run_id`'s job (the local cluster's tasks are its controller's
    children, each told its rank in SUBMITIT_LOCAL_GLOBALID)."""
    controller = JobLog(out).latest()[run_id][0]
    for child in Path(f"/proc/{controller}/task/{controller}/children").read_text().split():
        if f"SUBMITIT_LOCAL_GLOBALID={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
            return int(child)
    raise AssertionError(f"no task of rank {rank} under {controller}")


def test_a_preempted_job_of_a_runs_ranks_is_requeued_and_every_rank_resumes_to_the_same_numbers(two_ranks,
                                                                                               tmp_path):
    path, reference, study, two = two_ranks
    out = tmp_path / "preempted"
    runner = start(path, out, *LOCAL)
    poll(lambda: len(RunDir(out, two).read_epochs()) >= 3 and os.path.exists(f"{out}/slurm/jobs.jsonl"), runner,
         "the 2-rank run's third epoch")
    os.kill(task_of_rank(out, two, 0), signal.SIGUSR2)  # Slurm's signal: rank 0's task requeues the job
    log = runner.communicate(timeout=TIMEOUT)[0]
    assert runner.returncode == 0, log
    resumed = summaries(out, study)[two]
    assert 0 < resumed["resumed_from_epoch"] < 20, log
    assert first_difference(out, reference) is None


def fails_on_rank_1(ranks, join) -> float:
    """A rank's work: join, and one all-reduce, which rank 1 fails before."""
    join(torch.device("cpu"))
    if ranks.rank == 1:
        raise ValueError("its shard is bad")
    total = torch.ones(1)
    dist.all_reduce(total)
    return total.item()


def task(rank: int, port: int, train: bool, outcomes) -> None:
    """One task of a 2-task job, whose rank 0 tells rank 1 to train (`fails_on_rank_1`), or not."""
    tasks = Tasks(Ranks(rank, 2, rank), "127.0.0.1", port)
    if rank:
        with contextlib.suppress(ValueError):
            outcomes.put((rank, tasks.follow(fails_on_rank_1, ())))
        return
    if not train:
        tasks.tell(False)
        return outcomes.put((0, None))
    try:
        outcomes.put((0, tasks.lead(fails_on_rank_1, ())))
    except RankFailed as e:
        outcomes.put((0, e.line))


@pytest.mark.parametrize("train, expected", [(False, {0: None, 1: None}),  # it ends at once, and rank 0 with it
                                             (True, {0: "rank 1: ValueError: its shard is bad"})])
def test_a_jobs_tasks_train_only_once_rank_0_says_so_and_it_records_the_error_of_a_failed_rank(train, expected):
    spawn = multiprocessing.get_context("spawn")
    outcomes, port = spawn.SimpleQueue(), free_port()
    ranks = [spawn.Process(target=task, args=(rank, port, train, outcomes)) for rank in (1, 0)]  # 1 waits for 0
    for p in ranks:
        p.start()
    try:
        for p in ranks:
            p.join(TIMEOUT)
    finally:
        for p in ranks:
            p.kill()
    got = {}
    while not outcomes.empty():
        got.update([outcomes.get()])
    assert got == expected
    assert [p.exitcode for p in ranks] == [0, 0]
