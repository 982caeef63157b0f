"""Knowing the cost before starting: `mixkd ls`'s progress column and ETA from hand-written run folders, and
`mixkd run --dry-run --estimate`'s timed table, whose columns add up to its total."""

import json
import math

import pytest

from mixkd.cli import main
from mixkd.engine import lockstep_groups
from mixkd import estimate
from mixkd.estimate import Timing, cost_rows, wall_seconds
from mixkd.progress import RunProgress, eta, eta_line, key_of, read_progress
from mixkd.rundir import RunDir
from mixkd.study import parse_study
from tiny import tiny_study, write

EPOCHS = 4


def study(**overrides):
    """A teacher, a student from scratch and four students (T = 1, 2, 4, 8), four epochs each."""
    return tiny_study("est", **{"recipe": {"epochs": EPOCHS, "batch_size": 32, "schedule": "cosine"},
                                "grid": {"temperature": [1, 2, 4, 8]}, **overrides})


def log(rundir: RunDir, seconds: list[float]) -> None:
    rundir.path.mkdir(parents=True, exist_ok=True)
    (rundir.path / "epochs.jsonl").write_text("".join(json.dumps({"epoch": e, "seconds": s}) + "\n"
                                                      for e, s in enumerate(seconds, 1)))


def finished(rundir: RunDir, wall: float) -> None:
    """A run of a two-run lockstep group that trained EPOCHS epochs of 2 s in one go."""
    log(rundir, [2.0] * EPOCHS)
    rundir.write_summary({"status": "complete", "top1_last": 0.5, "train_seconds": 2.0 * EPOCHS,
                          "lockstep_size": 2, "wall_seconds": wall, "started_at": "then",
                          "resumed_from_epoch": 0, "device": "cpu", "device_name": "x86_64"})


@pytest.fixture
def half_done(tmp_path):
    """The teacher and the scratch run finished (one group: 1 s per run-epoch, 12 s wall for 8 s of
    training); two students in training together (3 epochs of 3 s: 1.5 s per run-epoch); one failed after an
    epoch; one not started."""
    s = parse_study(study())
    out = tmp_path / "out"
    teacher, scratch, *students = s.runs
    finished(RunDir(out, teacher.run_id), wall=10.0)
    finished(RunDir(out, scratch.run_id), wall=12.0)
    for spec in students[:2]:
        log(RunDir(out, spec.run_id), [3.0] * 3)
    log(RunDir(out, students[2].run_id), [9.0])
    RunDir(out, students[2].run_id).write_summary({"status": "failed", "error": "NonFiniteLoss"})
    return s, out


def test_progress_reads_epochs_logged_and_the_eta_prices_them(half_done):
    s, out = half_done
    logged = read_progress(s, out)
    teacher, scratch, *students = s.runs
    assert [logged.runs[r.run_id].label for r in s.runs] == ["4/4", "4/4", "3/4", "3/4", "1/4", "0/4"]
    assert [logged.runs[r.run_id].status for r in students] == ["running", "running", "failed", "pending"]
    assert logged.runs[teacher.run_id].seconds == 1.0 and logged.runs[students[0].run_id].seconds == 1.5
    assert logged.runs[students[2].run_id].seconds is None  # a failed run's group is not known: not priced
    assert logged.overhead == 1.5 and logged.device == "cpu (x86_64)"
    # the students' kind logged 1.5 s per run-epoch: (1 + 1 + 4) epochs left × 1.5 s × 1.5 for the rest
    line = eta_line(s, logged)
    assert line.startswith("ETA ≈ 14 s for one runner on cpu (x86_64): 6 epochs left in 3 runs × ")
    assert "×1.50 for evaluation and analyses" in line and "1 failed not counted" in line


def test_runs_of_a_kind_not_logged_yet_take_the_median_of_all(half_done):
    s, out = half_done
    logged = read_progress(s, out)
    specs = {r.run_id: r for r in s.runs}
    keys = {rid: key_of(spec, specs) for rid, spec in specs.items()}
    teacher, scratch, *students = s.runs
    pending = RunProgress(students[3].run_id, "pending", 0, EPOCHS)
    seen = [logged.runs[teacher.run_id], logged.runs[scratch.run_id]]  # 1 s each: students not logged
    e = eta([pending], keys, seen, overhead=None)
    assert (e.seconds, e.epochs, e.runs, e.keyed, e.median) == (4.0, 4, 1, 0, 1.0)
    assert eta([pending], keys, [pending], overhead=None) is None


def test_ls_shows_progress_after_the_status_and_one_eta_line(half_done, capsys):
    s, out = half_done
    path = write(out.parent, study())
    assert main(["ls", str(path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run_id", "role", "variant", "seed", "status", "progress", "top1_last"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert len(rows) == len(s.runs) and lines[-1].startswith("ETA ≈ 14 s")
    teacher, scratch, *students = s.runs
    assert rows[teacher.run_id][-3:] == ["complete", "4/4", "0.5"]
    assert rows[students[0].run_id][-3:] == ["pending", "3/4", "NaN"]  # the status column is the summary's
    assert rows[students[2].run_id][-3:] == ["failed", "1/4", "NaN"]
    with RunDir(out, students[1].run_id).claim() as held:  # a runner training it
        assert held and main(["ls", str(path), "--out", str(out)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert rows[students[1].run_id][-3:] == ["running", "3/4", "NaN"]
    assert rows[students[0].run_id][-3:] == ["pending", "3/4", "NaN"]  # its runner gone (killed, say)
    assert main(["ls", str(path), "--out", str(out), "--only", "role=teacher"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("ETA: nothing left to train")


def test_ls_before_any_epoch_says_so(tmp_path, capsys):
    path = write(tmp_path, study())
    assert main(["ls", str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count(" 0/4 ") == len(parse_study(study()).runs)
    assert out.splitlines()[-1].startswith("ETA: no estimate yet (no epoch logged)")


def test_a_lockstep_group_shares_its_batch_and_teacher_forwards():
    """Two students that see the teacher on clean and on mixed images: two forwards and one batch per step,
    shared; each its own step beside."""
    s = parse_study(study(grid={"mix": ["mixup"], "mixed_view": ["student", "both"], "temperature": [4]}))
    specs = {r.run_id: r for r in s.runs}
    todo = [r for r in s.runs if r.role == "student"]
    keys = {r.run_id: key_of(r, specs) for r in todo}
    (key,) = set(keys.values())
    timing = Timing(step=1.0, batch=0.1, forward=0.3, eval=0.5)  # own part: 0.6
    (row,), groups, seconds = cost_rows(todo, keys, {key: timing}, {r.run_id: 2.0 for r in todo},
                                        {r.run_id: EPOCHS for r in todo}, lockstep=8, train_images=96)
    assert len(groups) == 1 and row.steps == 3 and row.run_epochs == 2 * EPOCHS
    assert row.shared == pytest.approx(0.6 + (0.1 + 2 * 0.3) / 2)
    assert row.total == pytest.approx(2 * EPOCHS * (3 * 0.95 + 0.5) + 2 * 2.0) == pytest.approx(sum(seconds))


def test_workers_start_a_teachers_students_when_it_finishes():
    s = parse_study(study(grid={"temperature": [1, 4]}))
    groups = lockstep_groups(s.runs, 1)  # teacher, scratch, two students
    assert [g[0].role for g in groups] == ["teacher", "scratch", "student", "student"]
    seconds = [10.0, 10.0, 5.0, 5.0]
    assert wall_seconds(groups, seconds, 1) == 30.0
    assert wall_seconds(groups, seconds, 2) == 15.0  # teacher and scratch at once, then the two students
    assert wall_seconds(groups, seconds, 4) == 15.0  # the students wait for their teacher however many


def test_dry_run_estimate_times_each_kind_and_its_total_adds_up(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(estimate, "LEAST", 0.02)  # CI's time: steps of a few ms, timed for 20 ms at least
    path = write(tmp_path, study(grid={"mix": ["none", "mixup"], "temperature": [1, 4]}))
    out = tmp_path / "out"
    assert main(["run", str(path), "--dry-run", "--out", str(out), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(
        "time: not estimated; --estimate times a few steps of each of the 5 kinds of run")
    assert main(["run", str(path), "--dry-run", "--out", str(out), "--only", "role=scratch"]) == 0  # a slice
    assert "of each of the 2 kinds of run" in capsys.readouterr().out.splitlines()[-1]
    assert main(["run", str(path), "--dry-run", "--estimate", "--workers", "2", "--out", str(out),
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["teacher", "student"])
    names = lines[header].split()
    rows = [dict(zip(names, line.split())) for line in lines[header + 1:header + 6]]
    assert lines[header + 6].startswith("columns: ")
    assert {(r["teacher"], r["student"], r["mix"], r["loss"]) for r in rows} == {
        ("-", "cnn_small", "none", "ce"), ("-", "cnn_tiny", "none", "ce"), ("-", "cnn_tiny", "mixup", "ce"),
        ("cnn_small", "cnn_tiny", "none", "kd"), ("cnn_small", "cnn_tiny", "mixup", "kd")}
    for r in rows:
        assert float(r["s/step"]) > 0 and float(r["eval"]) > 0 and float(r["analyses"]) > 0
        assert int(r["steps/epoch"]) == 3 and int(r["run-epochs"]) == EPOCHS * int(r["runs"])
        recomputed = (int(r["run-epochs"]) * (int(r["steps/epoch"]) * float(r["grouped"]) + float(r["eval"]))
                      + int(r["runs"]) * float(r["analyses"]))
        assert math.isclose(recomputed, float(r["total"]), rel_tol=2e-3)
    total = next(line for line in lines if line.startswith("total: "))
    assert math.isclose(float(total.split()[1]), sum(float(r["total"]) for r in rows), rel_tol=2e-3)
    assert "on cpu (" in total and "for one runner: 7 runs in" in total and "--workers 2: ≈" in total
    assert not out.exists()


def test_estimate_without_dry_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["run", str(write(tmp_path, study())), "--estimate", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("mixkd: error: --estimate goes with --dry-run: mixkd run STUDY "
                                       "--dry-run --estimate\n")
    assert not (tmp_path / "out").exists()
