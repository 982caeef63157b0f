"""Big grids in slices: `--only` trains the matching runs and the teachers they need, the tables still cover the
whole study, and run folders the study no longer names are listed as orphaned, never dropped."""

import pandas as pd
import pytest

from mixkd.cli import main
from mixkd.errors import MixkdError
from mixkd.slices import parse_only, select
from mixkd.study import parse_study
from tiny import run, tiny_study, write

GRID = {"mix": ["none", "mixup"], "temperature": [1, 4], "mixed_view": ["student"], "loss": ["kd", "dkd"],
        "seeds": [0, 1]}


def study(**overrides) -> dict:
    """Two teachers (one Mix-T) × a cnn_tiny student × the grid, and the baselines."""
    return tiny_study("sl", **{"teachers": {"t": {"model": "cnn_small"}, "u": {"model": "cnn_small", "mix": "mixup"}},
                               "grid": GRID, **overrides})


def test_a_slice_trains_its_runs_and_their_teachers_and_the_tables_cover_the_study(tmp_path, capsys):
    path = write(tmp_path, study())
    assert run(path, tmp_path / "out", "--only", "teacher=u", "--only", "seed=0", "--only", "loss=dkd") == 0
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    done = runs[runs["status"] == "complete"]
    assert len(runs) == len(parse_study(study()).runs)  # the whole study, the rest pending
    assert set(runs["status"]) == {"complete", "pending"}
    assert sorted(done["role"]) == ["student"] * 4 + ["teacher"]
    students = done[done["role"] == "student"]
    assert set(students["teacher"]) == {"u"} and set(students["seed"]) == {0} and set(students["loss"]) == {"dkd"}
    capsys.readouterr()
    assert main(["ls", str(path), "--out", str(tmp_path / "out"), "--only", "role=teacher"]) == 0
    listed = capsys.readouterr().out
    assert "teacher u" in listed and "teacher t" in listed and "→" not in listed
    assert run(path, tmp_path / "out") == 0  # then the rest, the slice's runs left as they are
    assert (pd.read_csv(tmp_path / "out" / "runs.csv")["status"] == "complete").all()


@pytest.mark.parametrize("terms, says", [
    (["colour=red"], "unknown key 'colour'; allowed: role, teacher, student, mix, loss, view, temperature"),
    (["teacher=x"], "no run of sl has teacher 'x'; it has t, u"),
    (["seed"], "expected KEY=VALUE[,VALUE...]"),
    (["mix=cutmix"], "no run of sl has mix 'cutmix'; it has mixup, none"),
])
def test_a_slice_that_names_nothing_is_a_one_line_error(terms, says):
    with pytest.raises(MixkdError) as e:
        parse_only(terms, parse_study(study()))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_values_are_read_as_the_study_writes_them_and_keys_narrow():
    s = parse_study(study())
    four = select(s, parse_only(["temperature=4.0", "role=student"], s))
    students = [r for r in s.runs if r.run_id in four and r.role == "student"]
    assert students and all(r.run.temperature == 4 for r in students)
    assert {r.role for r in s.runs if r.run_id in four} == {"student", "teacher"}  # their teachers come along
    both = select(s, parse_only(["seed=0,1", "mix=mixup", "role=scratch"], s))
    assert {r.role for r in s.runs if r.run_id in both} == {"scratch"} and len(both) == 2


def test_run_folders_the_study_no_longer_names_are_listed_as_orphans_and_kept(tmp_path, capsys):
    out = tmp_path / "out"
    assert run(write(tmp_path, study()), out, "--only", "teacher=t", "--only", "seed=0") == 0
    before = {p.name for p in (out / "runs").iterdir()}
    edited = study(grid={**GRID, "loss": ["kd"]})  # t's four seed-0 dkd students are no longer named
    path = write(tmp_path, edited, "edited.yaml")
    assert run(path, out, "--only", "role=teacher") == 0
    capsys.readouterr()
    assert main(["ls", str(path), "--out", str(out)]) == 0
    assert "4 orphaned: run folders in" in capsys.readouterr().out
    assert before <= {p.name for p in (out / "runs").iterdir()}  # kept
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["run_id"]) == sorted(r.run_id for r in parse_study(edited).runs)
