"""Study files: grid expansion, include/exclude, run-id stability, one-line validation errors, the CLI,
and the shipped studies. Pure Python: nothing is trained and no dataset is read."""

from __future__ import annotations

import copy
import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml

from mixkd import cli, data, losses, metrics, mixing, schedules
from mixkd.config import run_id
from mixkd.errors import ConfigError, MixkdError, StudyWarning
from mixkd.models import create_model
from mixkd.rundir import RunDir
from mixkd.study import load_study, parse_study

REPO = Path(__file__).resolve().parents[1]
STUDIES = REPO / "studies"


# ---------------------------------------------------------------------------------------------- helpers


def study(**overrides) -> dict:
    """A small valid study on digits; keyword arguments replace top-level keys."""
    raw = {"name": "t", "dataset": "digits",
           "teachers": {"t1": {"model": "cnn_wide"}, "t2": {"model": "cnn_wide", "mix": "mixup"}},
           "students": {"s1": {"model": "cnn_tiny"}, "s2": {"model": "cnn_small"}},
           "recipe": {"epochs": 2},
           "grid": {"mix": ["none", "mixup", "cutmix"], "temperature": [1, 4], "mixed_view": ["student", "both"],
                    "loss": ["kd"], "seeds": [0, 1]}}
    raw.update(copy.deepcopy(overrides))
    return raw


def with_grid(**axes) -> dict:
    raw = study()
    raw["grid"].update(axes)
    return raw


def write(tmp_path: Path, raw, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def roles(s) -> Counter:
    return Counter(r.role for r in s.runs)


def ids(s) -> list[str]:
    return [r.run_id for r in s.runs]


def by_role(s, role: str) -> list:
    return [r for r in s.runs if r.role == role]


def kd_points(s) -> set[tuple]:
    """(teacher, student, mix name, T, view, loss name, seed) of every KD run."""
    return {(r.labels["teacher"], r.labels["student"], r.config["mix"]["name"], r.config["distill"]["temperature"],
             r.config["distill"]["mixed_view"], r.config["distill"]["loss"]["name"], r.config["seed"])
            for r in by_role(s, "student")}


def expected_runs(teachers: int, students: int, pairs: int, mixes: list[str], temperatures: int, views: list[str],
                  losses_: int, seeds: int, baselines: bool = True) -> int:
    """The expansion rule written out: teachers + baselines + pairs × KD points per pair, where every point
    whose mix or view is `none` collapses into one unmixed point per (T, loss, seed)."""
    unmixed = temperatures * losses_ * seeds if ("none" in mixes or "none" in views) else 0
    mixed = sum(m != "none" for m in mixes) * sum(v != "none" for v in views) * temperatures * losses_ * seeds
    return teachers + (students * len(mixes) * seeds if baselines else 0) + pairs * (unmixed + mixed)


# ---------------------------------------------------------------------------------------- grid expansion


def quickstart_counts() -> dict[str, int]:
    """The quickstart's expected run counts by role, from the expansion rule applied to its file."""
    s = load_study(STUDIES / "quickstart.yaml")
    g, f = s.file.grid, s.file
    mixes = [m if isinstance(m, str) else m["name"] for m in g.mix]
    pairs = len(f.pairs) if f.pairs is not None else len(f.teachers) * len(f.students)
    teachers, scratch = len(f.teachers), len(f.students) * len(mixes) * len(g.seeds)
    total = expected_runs(teachers, len(f.students), pairs, mixes, len(g.temperature), g.mixed_view, len(g.loss),
                          len(g.seeds))
    return {"teacher": teachers, "scratch": scratch, "student": total - teachers - scratch}


def test_quickstart_expands_to_the_formula():
    # 2 teachers + 1 student × 3 mixes × 2 seeds + 2 pairs × (2 T × 2 seeds unmixed + 2 mixes × 2 T × 2 views
    # × 2 seeds) = 48 runs with the quickstart's original grid; the counts follow its file.
    s = load_study(STUDIES / "quickstart.yaml")
    assert roles(s) == quickstart_counts()
    assert len(set(ids(s))) == len(s.runs)
    assert [r.role for r in s.runs] == sorted((r.role for r in s.runs), key=["teacher", "scratch", "student"].index)


def test_every_student_points_at_one_of_the_study_teachers():
    s = parse_study(study())
    teacher_ids = {r.run_id for r in by_role(s, "teacher")}
    for r in by_role(s, "student"):
        assert r.config["distill"]["teacher"] in teacher_ids
    for r in by_role(s, "teacher") + by_role(s, "scratch"):
        assert r.config["distill"] is None


def test_default_pairs_are_every_teacher_with_every_student():
    s = parse_study(study())
    assert len(s.runs) == expected_runs(2, 2, 4, ["none", "mixup", "cutmix"], 2, ["student", "both"], 1, 2) == 94
    assert {(t, st) for t, st, *_ in kd_points(s)} == {("t1", "s1"), ("t1", "s2"), ("t2", "s1"), ("t2", "s2")}


def test_explicit_pairs_subset():
    s = parse_study(study(pairs=[{"teacher": "t1", "student": "s1"}, {"teacher": "t2", "student": "s2"}]))
    assert len(s.runs) == expected_runs(2, 2, 2, ["none", "mixup", "cutmix"], 2, ["student", "both"], 1, 2) == 54
    assert {(t, st) for t, st, *_ in kd_points(s)} == {("t1", "s1"), ("t2", "s2")}
    # Baselines cover every student, paired or not.
    assert roles(s)["scratch"] == 2 * 3 * 2


def test_baselines_false():
    s = parse_study(study(baselines=False))
    assert roles(s) == {"teacher": 2, "student": 4 * (2 * 2 + 2 * 2 * 2 * 2)}
    assert len(s.runs) == expected_runs(2, 2, 4, ["none", "mixup", "cutmix"], 2, ["student", "both"], 1, 2,
                                        baselines=False)


def test_unmixed_points_collapse():
    # mix none × any view and any mix × view none are all one run per (pair, T, loss, seed).
    s = parse_study(with_grid(mix=["none", "mixup"], mixed_view=["none", "student", "both"]))
    students = by_role(s, "student")
    unmixed = [r for r in students if r.config["mix"]["name"] == "none"]
    assert all(r.config["distill"]["mixed_view"] == "none" for r in unmixed)
    assert len(unmixed) == 4 * 2 * 1 * 2
    assert not [r for r in students if r.config["distill"]["mixed_view"] == "none" and r.config["mix"]["name"] != "none"]
    assert len(s.runs) == expected_runs(2, 2, 4, ["none", "mixup"], 2, ["none", "student", "both"], 1, 2)


def test_single_values_are_one_entry_axes():
    s = parse_study(with_grid(mix="mixup", temperature=4, mixed_view="both", loss="kd", seeds=3))
    assert roles(s) == {"teacher": 2, "scratch": 2, "student": 4}
    assert {p[2:] for p in kd_points(s)} == {("mixup", 4.0, "both", "kd", 3)}


# -------------------------------------------------------------------------------------- include / exclude


FULL = expected_runs(2, 2, 4, ["none", "mixup", "cutmix"], 2, ["student", "both"], 1, 2)  # study() as is: 94
KD = FULL - 2 - 2 * 3 * 2  # its student runs: 80


def test_exclude_by_one_axis_value():
    s = parse_study(study(exclude=[{"temperature": 4}]))
    assert {p[3] for p in kd_points(s)} == {1.0}
    assert roles(s)["student"] == 4 * (1 * 2 + 2 * 2 * 1 * 2)
    assert roles(s)["scratch"] == 12  # exclude touches KD points only


def test_exclude_by_a_list_of_values():
    s = parse_study(study(exclude=[{"mix": ["mixup", "cutmix"]}]))  # only the unmixed points remain
    assert {(p[2], p[4]) for p in kd_points(s)} == {("none", "none")}
    assert roles(s)["student"] == 4 * 2 * 2
    s = parse_study(study(exclude=[{"seeds": [1, 5]}, {"temperature": [1.0, 3]}]))
    assert {(p[3], p[6]) for p in kd_points(s)} == {(4.0, 0)}
    assert roles(s)["student"] == KD // 4


def test_exclude_view_none_removes_the_unmixed_runs():
    s = parse_study(with_grid(mix=["none", "mixup"], mixed_view=["none", "student"]) | {"exclude": [{"mixed_view": "none"}]})
    assert {p[4] for p in kd_points(s)} == {"student"}


def test_exclude_keys_combine_with_and():
    s = parse_study(study(exclude=[{"mix": "cutmix", "temperature": 1, "teacher": "t2"}]))
    points = kd_points(s)
    assert not [p for p in points if p[0] == "t2" and p[2] == "cutmix" and p[3] == 1.0]
    assert [p for p in points if p[0] == "t1" and p[2] == "cutmix" and p[3] == 1.0]
    assert roles(s)["student"] == KD - 2 * 2 * 2  # t2 × 2 students × 2 views × 2 seeds


def test_exclude_by_mix_name_vs_mapping():
    grid = {"mix": ["none", {"name": "mixup", "alpha": 1.0}, {"name": "mixup", "alpha": 0.2}]}
    by_name = parse_study(with_grid(**grid, seeds=[0]) | {"exclude": [{"mix": "mixup"}]})
    assert {r.config["mix"]["name"] for r in by_role(by_name, "student")} == {"none"}
    by_params = parse_study(with_grid(**grid, seeds=[0]) | {"exclude": [{"mix": {"name": "mixup", "alpha": 0.2}}]})
    alphas = {r.config["mix"].get("alpha") for r in by_role(by_params, "student")}
    assert alphas == {None, 1.0}
    assert roles(by_params)["student"] == 4 * (2 + 1 * 2 * 2)


def test_exclude_by_loss_mapping():
    s = parse_study(with_grid(loss=[{"name": "kd", "ce_weight": 0.1}, {"name": "kd", "ce_weight": 0.5}])
                    | {"exclude": [{"loss": {"name": "kd", "ce_weight": 0.5}}]})
    assert {r.config["distill"]["loss"]["ce_weight"] for r in by_role(s, "student")} == {0.1}


def test_include_fixes_some_axes_and_spans_the_rest():
    s = parse_study(study(include=[{"teacher": "t1", "mix": "cutmix", "temperature": 8}]))
    added = [p for p in kd_points(s) if p[3] == 8.0]
    # Fixed: teacher, mix, T. Spanned: the students t1 is paired with, views, losses, seeds.
    assert {(p[0], p[2]) for p in added} == {("t1", "cutmix")}
    assert len(added) == 2 * 2 * 1 * 2
    assert len(s.runs) == FULL + len(added)


def test_include_adds_a_point_outside_the_grid():
    s = parse_study(study(include=[{"teacher": "t2", "student": "s1", "mix": {"name": "mixup", "alpha": 0.4},
                                    "temperature": 2.5, "mixed_view": "teacher", "seeds": 7}]))
    extra = [r for r in by_role(s, "student") if r.config["seed"] == 7]
    assert len(extra) == 1
    (r,) = extra
    assert (r.labels["teacher"], r.labels["student"]) == ("t2", "s1")
    assert r.config["mix"] == {"name": "mixup", "prob": 1.0, "alpha": 0.4, "per_sample": False}
    assert r.config["distill"]["temperature"] == 2.5 and r.config["distill"]["mixed_view"] == "teacher"
    assert len(s.runs) == FULL + 1


def test_include_of_a_pair_outside_pairs():
    s = parse_study(study(pairs=[{"teacher": "t1", "student": "s1"}],
                          include=[{"teacher": "t2", "student": "s2", "mix": "none", "temperature": 4}]))
    assert {(p[0], p[1]) for p in kd_points(s)} == {("t1", "s1"), ("t2", "s2")}
    assert len([p for p in kd_points(s) if p[0] == "t2"]) == 2  # one unmixed point per seed


def test_include_restores_an_excluded_point_and_duplicates_collapse():
    s = parse_study(study(exclude=[{"mix": "cutmix"}], include=[{"mix": "cutmix", "teacher": "t1", "student": "s1"},
                                                                {"mix": "mixup"}]))  # mixup: all already there
    cut = [p for p in kd_points(s) if p[2] == "cutmix"]
    assert {(p[0], p[1]) for p in cut} == {("t1", "s1")} and len(cut) == 2 * 2 * 2
    assert len(s.runs) == FULL - 3 * 8 and len(set(ids(s))) == len(s.runs)


@pytest.mark.parametrize("where", ["include", "exclude"])
def test_unknown_axis_names_the_path(where):
    with pytest.raises(ConfigError) as e:
        parse_study(study(**{where: [{"mix": "mixup"}, {"temprature": 4}]}))
    assert e.value.path == f"{where}[1].temprature"
    assert "unknown axis; allowed: teacher, student, mix, temperature, mixed_view, loss, seed" in str(e.value)


def test_include_validates_its_values():
    with pytest.raises(ConfigError, match=r"include\[0\]\.mixed_view\[0\]: 'sideways' is not allowed; allowed: none"):
        parse_study(study(include=[{"mixed_view": "sideways"}]))
    with pytest.raises(ConfigError, match=r"include\[0\]\.mix\.name: unknown mixer 'mixpu'"):
        parse_study(study(include=[{"mix": "mixpu"}]))
    with pytest.raises(ConfigError, match=r"include\[0\]\.temperature\[0\]: expected float"):
        parse_study(study(include=[{"temperature": "hot"}]))


@pytest.mark.parametrize("entry, path", [({"teacher": "nope", "student": "s1"}, "include[0].teacher"),
                                         ({"teacher": "t1", "student": "nope"}, "include[0].student")])
def test_include_naming_an_undefined_model_is_a_config_error(entry, path):
    with pytest.raises(ConfigError) as e:
        parse_study(study(include=[entry]))
    assert e.value.path == path and "'nope' is not defined" in str(e.value)


def test_exclude_with_an_unknown_mix_name_is_an_error():
    with pytest.raises(ConfigError, match=r"exclude\[0\]\.mix"):
        parse_study(study(exclude=[{"mix": "cutmx"}]))


def test_exclude_mapping_values_are_coerced_like_the_grid(tmp_path):
    text = """
name: t
dataset: digits
teachers: {t1: {model: cnn_wide}}
students: [cnn_tiny]
grid: {mix: [none, {name: mixup, alpha: 2e-1}, {name: mixup, alpha: 1.0}]}
exclude: [{mix: {name: mixup, alpha: 2e-1}}]
"""
    s = load_study(write(tmp_path, text))
    assert {r.config["mix"].get("alpha") for r in by_role(s, "student")} == {None, 1.0}


# -------------------------------------------------------------------------------------------- run ids


def test_same_study_gives_the_same_ids(tmp_path):
    assert ids(parse_study(study())) == ids(parse_study(study()))
    path = write(tmp_path, study())
    assert ids(load_study(path)) == ids(load_study(path)) == ids(parse_study(study()))


def test_an_optional_flag_written_false_is_the_same_run_as_unset():
    """`standardise` came after `kd` (default None: unset, off, so no id changed); `false` says the same."""
    unset, off = (ids(parse_study(with_grid(loss=[loss]))) for loss in ("kd", {"name": "kd", "standardise": False}))
    assert unset == off
    assert unset != ids(parse_study(with_grid(loss=[{"name": "kd", "standardise": True}])))


def _reversed_keys(value):
    if isinstance(value, dict):
        return {k: _reversed_keys(v) for k, v in reversed(list(value.items()))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_key_order_is_irrelevant(tmp_path):
    raw = study(recipe={"epochs": 2, "lr": 0.1, "schedule": {"name": "multistep", "milestones": [1], "gamma": 0.5}})
    a = load_study(write(tmp_path, raw, "a.yaml"))
    b = load_study(write(tmp_path, _reversed_keys(raw), "b.yaml"))
    assert sorted(ids(a)) == sorted(ids(b))
    assert run_id({"a": 1, "b": {"c": 2, "d": [1, 2]}}) == run_id({"b": {"d": [1, 2], "c": 2}, "a": 1})


def test_number_spellings_give_the_same_id(tmp_path):
    assert yaml.safe_load("wd: 5e-4")["wd"] == "5e-4"  # why coercion matters: PyYAML 1.1 reads this as a string
    template = """
name: t
dataset: digits
recipe: {{epochs: 2, weight_decay: {wd}, lr: {lr}}}
teachers: {{t1: {{model: cnn_wide}}}}
students: [cnn_tiny]
grid: {{mix: [none, {{name: mixup, alpha: {alpha}}}], temperature: [{t}]}}
"""
    a = load_study(write(tmp_path, template.format(wd="5e-4", lr="1e-1", alpha="1", t="4"), "a.yaml"))
    b = load_study(write(tmp_path, template.format(wd="0.0005", lr="0.1", alpha="1.0", t="4.0"), "b.yaml"))
    assert ids(a) == ids(b)
    assert a.runs[0].config["recipe"]["weight_decay"] == 0.0005
    assert {r.config["distill"]["temperature"] for r in by_role(a, "student")} == {4.0}


@pytest.mark.parametrize("explicit, implicit", [
    ({"grid": {"mix": [{"name": "mixup", "alpha": 1.0, "per_sample": False, "prob": 1.0}]}},
     {"grid": {"mix": ["mixup"]}}),
    ({"grid": {"loss": [{"name": "kd", "ce_weight": 0.1, "kd_weight": 0.9}]}}, {"grid": {"loss": ["kd"]}}),
    ({"grid": {"mix": [{"name": "pmu", "mixed_fraction": 0.1, "reference_sampling": False}]}},
     {"grid": {"mix": ["pmu"]}}),
    ({"recipe": {"epochs": 240, "batch_size": 64, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
                 "schedule": {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}}}, {"recipe": {}}),
    ({"dataset": {"name": "digits"}}, {"dataset": "digits"}),
    ({"teachers": {"t1": {"model": "cnn_wide", "mix": "none", "seed": 0, "recipe": {}}}},
     {"teachers": {"t1": {"model": "cnn_wide"}}}),
    ({"grid": {"temperature": [4.0], "mixed_view": ["student"], "seeds": [0]}}, {"grid": {}}),
], ids=["mix-alpha", "loss-weights", "pmu", "recipe", "dataset", "teacher", "grid-axes"])
def test_writing_a_default_gives_the_same_id(explicit, implicit):
    def make(overrides):
        raw = study(grid={}, teachers={"t1": {"model": "cnn_wide"}})
        raw.update(copy.deepcopy(overrides))
        return parse_study(raw)

    assert ids(make(explicit)) == ids(make(implicit))


def _ids_by_label(s) -> dict[tuple, str]:
    return {(r.role, r.labels["name"], r.labels["teacher"], r.config["mix"]["name"], r.config["seed"],
             (r.config["distill"] or {}).get("temperature"), (r.config["distill"] or {}).get("mixed_view")): r.run_id
            for r in s.runs}


def test_any_changed_value_changes_the_id():
    base = _ids_by_label(parse_study(study()))

    def changed(raw):
        new = _ids_by_label(parse_study(raw))
        assert new.keys() == base.keys()
        return {k for k in base if base[k] != new[k]}

    assert changed(study(recipe={"epochs": 2, "lr": 0.051})) == set(base)  # every run uses the study recipe
    assert changed(study(recipe={"epochs": 3})) == set(base)
    with_alpha = with_grid(mix=["none", {"name": "mixup", "alpha": 0.5}, "cutmix"])
    assert changed(with_alpha) == {k for k in base if k[3] == "mixup" and k[0] != "teacher"}
    with_weight = with_grid(loss=[{"name": "kd", "kd_weight": 0.8}])
    assert changed(with_weight) == {k for k in base if k[0] == "student"}


def test_seed_changes_the_id():
    a, b = parse_study(with_grid(seeds=[0])), parse_study(with_grid(seeds=[1]))
    assert set(ids(a)) & set(ids(b)) == {r.run_id for r in by_role(a, "teacher")}  # the grid seed is not theirs
    teacher_seed = study()
    teacher_seed["teachers"]["t1"]["seed"] = 1
    assert ids(parse_study(teacher_seed))[0] != ids(parse_study(study()))[0]


def test_a_teacher_recipe_change_changes_its_students_ids():
    raw = study()
    raw["teachers"]["t1"]["recipe"] = {"lr": 0.2}
    base, new = _ids_by_label(parse_study(study())), _ids_by_label(parse_study(raw))
    changed = {k for k in base if base[k] != new[k]}
    assert changed == {k for k in base if (k[0] == "teacher" and k[1] == "t1") or k[2] == "t1"}
    assert not [k for k in changed if k[0] == "scratch"]


def test_a_teacher_mix_change_changes_its_students_ids():
    raw = study()
    raw["teachers"]["t2"]["mix"] = {"name": "mixup", "alpha": 0.3}
    base, new = _ids_by_label(parse_study(study())), _ids_by_label(parse_study(raw))
    assert {k for k in base if base[k] != new[k]} == {k for k in base if k[1] == "t2" or k[2] == "t2"}


def test_labels_are_not_hashed():
    renamed = study(teachers={"plain": {"model": "cnn_wide"}, "mixt": {"model": "cnn_wide", "mix": "mixup"}},
                    description="another description")
    assert ids(parse_study(renamed)) == ids(parse_study(study()))


def test_train_size_is_part_of_the_id_and_absent_changes_no_id():
    plain, absent = (parse_study(study(dataset=d)) for d in ("cifar100", {"name": "cifar100", "train_size": None}))
    assert ids(plain) == ids(absent) and "train_size" not in plain.dataset.params
    subset = parse_study(study(dataset={"name": "cifar100", "train_size": "1e3"}))
    assert subset.dataset.params["train_size"] == 1000 and not set(ids(subset)) & set(ids(plain))


def test_download_flag_does_not_change_ids():
    assert ids(parse_study(study(dataset={"name": "cifar100", "download": True}))) == \
        ids(parse_study(study(dataset="cifar100")))


PINNED = {"name": "pin", "dataset": "digits", "recipe": {"epochs": 3},
          "teachers": {"t": {"model": "cnn_wide"}}, "students": {"s": {"model": "cnn_tiny"}},
          "grid": {"mix": ["mixup"], "temperature": [4], "mixed_view": ["both"], "loss": ["kd"], "seeds": [0]}}


def test_pinned_run_ids():
    # Regression guard. These ids name the run directories on disk: if this test fails, the hashed config
    # changed shape or content, and EVERY cached run (teachers included) will be trained again. Update the
    # ids only for a deliberate change of what a run computes, and say so in the changelog.
    s = parse_study(PINNED)
    assert [(r.role, r.run_id) for r in s.runs] == [
        ("teacher", "36f167f3a9db"), ("scratch", "27a7dccbcf75"), ("student", "c97ce7f31ec8")]


# --------------------------------------------------------------------------------------- validation errors


def _bad(mutate) -> dict:
    raw = study()
    mutate(raw)
    return raw


BAD = [  # (how to break the study, the field path, what the message must also say)
    (lambda r: r.update(epochz=3), "epochz", ["unknown key", "allowed: name, dataset, teachers, students"]),
    (lambda r: r["recipe"].update(lr_decay=0.1), "recipe.lr_decay", ["unknown key", "epochs, batch_size, lr"]),
    (lambda r: r["grid"].update(mixed_view=["student", "studnet"]), "grid.mixed_view[1]",
     ["'studnet' is not allowed", "allowed: none, student, teacher, both"]),
    (lambda r: r["students"].update(s2={"model": "resnet2"}), "students.s2.model",
     ["unknown model 'resnet2'", "did you mean", "resnet20"]),
    (lambda r: r["teachers"].update(t1={"model": "cnn_wid"}), "teachers.t1.model", ["did you mean cnn_wide"]),
    (lambda r: r["students"].update(s2={"model": "resnet20", "model_args": {"drop_rate": 0.1}}),
     "students.s2.model_args.drop_rate", ["unknown argument of resnet20", "allowed: none"]),
    (lambda r: r["teachers"].update(t1={"model": "cnn_wide", "model_args": {"drop_rate": "high"}}),
     "teachers.t1.model_args.drop_rate", ["expected float, got 'high'"]),
    (lambda r: r["teachers"].update(t1={"model": "cnn_wide", "model_args": {"drop_rate": 2}}),
     "teachers.t1.model_args", ["cnn_wide rejects them", "ValueError", "dropout probability"]),
    (lambda r: r["grid"].update(seeds=[0, -1]), "grid.seeds[1]", ["must be ≥ 0"]),
    (lambda r: r["grid"].update(mix=["none", "mixpu"]), "grid.mix[1].name",
     ["unknown mixer 'mixpu'", "did you mean", "mixup", "registered:"]),
    (lambda r: r["grid"].update(mix=[{"name": "mixup", "beta": 0.2}]), "grid.mix[0].beta",
     ["unknown parameter of mixer 'mixup'", "allowed: name, prob, alpha, per_sample"]),
    (lambda r: r["grid"].update(loss=[{"name": "kd", "T": 4}]), "grid.loss[0].T",
     ["unknown parameter of loss 'kd'", "allowed: name, ce_weight, kd_weight"]),
    (lambda r: r["teachers"]["t2"].update(mix={"name": "mixup", "alpha": "big"}), "teachers.t2.mix.alpha",
     ["expected float, got 'big'"]),
    (lambda r: r.update(pairs=[{"teacher": "t3", "student": "s1"}]), "pairs[0].teacher",
     ["'t3' is not defined", "defined: t1, t2"]),
    (lambda r: r.update(pairs=[{"teacher": "t1", "student": "s9"}]), "pairs[0].student", ["defined: s1, s2"]),
    (lambda r: r["recipe"].update(lr="fast"), "recipe.lr", ["expected float, got 'fast'"]),
    (lambda r: r["recipe"].update(epochs=2.5), "recipe.epochs", ["expected an integer"]),
    (lambda r: r["recipe"].update(lr=float("nan")), "recipe.lr", ["expected a finite number, got nan"]),
    (lambda r: r.update(students=["cnn_tiny", 3]), "students[1]", ["expected a model name or a mapping, got 3"]),
    (lambda r: r["grid"].update(mix=[{"name": "manifold_mixup", "stages": "ab"}]), "grid.mix[0].stages[0]",
     ["expected int, got 'ab'"]),
    (lambda r: r["recipe"].update(schedule={"name": "multistep", "milestones": ["abc"]}),
     "recipe.schedule.milestones[0]", ["expected int, got 'abc'"]),
    (lambda r: r["grid"].update(mix=[{"name": "pmu", "mixed_fraction": 2}]), "grid.mix[0]",
     ["mixer 'pmu' rejects its parameters", "mixed_fraction must be in [0, 1]"]),
    (lambda r: r["grid"].update(mix=[{"name": "resizemix", "interpolation": "foo"}]), "grid.mix[0]",
     ["mixer 'resizemix' rejects its parameters"]),
    (lambda r: r["teachers"]["t2"].update(mix={"name": "resizemix", "scale": [0.5]}), "teachers.t2.mix",
     ["scale must be [low, high]"]),
    (lambda r: r["recipe"].update(nesterov="yes"), "recipe.nesterov", ["expected true or false"]),
    (lambda r: r["recipe"].update(schedule="cosin"), "recipe.schedule.name", ["did you mean cosine"]),
    (lambda r: r.pop("teachers"), "teachers", ["is required"]),
    (lambda r: r.update(teachers={}), "teachers", ["needs at least one entry"]),
    (lambda r: r.pop("name"), "name", ["is required"]),
    (lambda r: r.update(dataset="cifar1000"), "dataset.name", ["unknown dataset 'cifar1000'", "cifar100"]),
    (lambda r: r.update(grid=[1]), "grid", ["expected a mapping"]),
    (lambda r: r["grid"].update(seeds=["zero"]), "grid.seeds[0]", ["expected int"]),
    (lambda r: r.update(exclude=["mixup"]), "exclude[0]", ["expected a mapping"]),
    # a list where a name is expected
    (lambda r: r["grid"].update(mix=[{"name": ["mixup"]}]), "grid.mix[0].name", ["unknown mixer ['mixup']"]),
    (lambda r: r.update(dataset={"name": ["digits"]}), "dataset.name", ["unknown dataset ['digits']", "digits"]),
    (lambda r: r.update(students=[{"model": ["cnn_tiny"]}]), "students[0].model",
     ["expected a name, got ['cnn_tiny']"]),
    # sizes the data cannot have
    (lambda r: r.update(dataset={"name": "synthetic", "num_classes": 0}), "dataset.num_classes", ["must be ≥ 2"]),
    (lambda r: r.update(dataset={"name": "synthetic", "train_size": 0}), "dataset.train_size", ["must be ≥ 1"]),
    (lambda r: r.update(dataset={"name": "digits", "val_size": 1437}), "dataset.val_size",
     ["must be less than the 1437 training images of digits, got 1437"]),
    (lambda r: r.update(dataset={"name": "cifar100", "train_size": 45001, "val_size": 5000}), "dataset.train_size",
     ["must be at most the 45000 training images left after val_size 5000, got 45001"]),
    (lambda r: r.update(dataset={"name": "cifar10", "train_size": 64}) or r["recipe"].update(batch_size=128),
     "recipe.batch_size", ["at most the 64 images the dataset trains on"]),
    (lambda r: r["recipe"].update(batch_size=1500), "recipe.batch_size",
     ["must be at most the 1437 images the dataset trains on, got 1500"]),
    (lambda r: r["students"]["s2"].update(recipe={"batch_size": 1500}), "students.s2.recipe.batch_size",
     ["at most the 1437 images"]),
    # accepted silently, until now
    (lambda r: r.update(students=["cnn_tiny", "cnn_small", "cnn_tiny"]), "students[2]",
     ["'cnn_tiny' already names students[0]", "its own `name`"]),
    (lambda r: r.update(students=[{"model": "cnn_tiny", "name": "s"}, {"model": "cnn_small", "name": "s"}]),
     "students[1]", ["'s' already names students[0]"]),
    (lambda r: r.update(exclude=[{"teacher": "nope"}]), "exclude[0].teacher", ["'nope' is not defined", "t1, t2"]),
    (lambda r: r["grid"].update(mix=[{"name": "mixup", "alpha": 0}]), "grid.mix[0]",
     ["mixer 'mixup' rejects its parameters", "alpha must be > 0"]),
    (lambda r: r["teachers"]["t2"].update(mix={"name": "cutmix", "alpha": -1}), "teachers.t2.mix",
     ["alpha must be > 0"]),
    (lambda r: r["grid"].update(loss=[{"name": "kd", "ce_weight": -0.1}]), "grid.loss[0].ce_weight",
     ["loss 'kd': ce_weight must be ≥ 0, got -0.1"]),
    (lambda r: r.update(include=[{"loss": {"name": "dkd", "beta": -8}}]), "include[0].loss.beta",
     ["beta must be ≥ 0"]),
    (lambda r: r["grid"].update(loss=[{"name": "crd", "nce_temperature": 0}]), "grid.loss[0].nce_temperature",
     ["loss 'crd': nce_temperature must be > 0, got 0"]),
    (lambda r: r["grid"].update(loss=[{"name": "crd", "momentum": 2}]), "grid.loss[0].momentum",
     ["momentum must be in [0, 1]"]),
    (lambda r: r["grid"].update(loss=[{"name": "vid", "initial_variance": 0}]), "grid.loss[0].initial_variance",
     ["must be > 0"]),
    (lambda r: r["grid"].update(mix=["transmix"]), "students.s1.model",
     ["cnn_tiny cannot take mix 'transmix'", "TransMix needs a ViT student with a class token"]),
    (lambda r: r["grid"].update(mix=[{"name": "manifold_mixup", "stages": [0, 9]}]), "students.s1.model",
     ["cnn_tiny cannot take mix 'manifold_mixup'", "stages [0, 9]", "mixes at stages 0..3"]),
    (lambda r: r.update(baselines=False) or r["grid"].update(mix=[{"name": "manifold_mixup", "stages": [9]}],
                                                             mixed_view=["teacher"]),
     "teachers.t1.model", ["cnn_wide cannot take mix 'manifold_mixup'", "stages [9]"]),  # a teacher that sees it
    # `name:` is a label, not a path
    (lambda r: r.update(name="../../x"), "name", ["'../../x' is a label, not a path", "`output:` or --out"]),
    (lambda r: r.update(name="/tmp/x"), "name", ["is a label, not a path"]),
    (lambda r: r.update(name="."), "name", ["is a label, not a path"]),
    (lambda r: r.update(name=""), "name", ["is a label, not a path"]),
]
BAD_IDS = ["top-level-key", "recipe-key", "mixed-view", "model", "model-teacher", "model-arg", "model-arg-type",
           "model-arg-range", "negative-seed",
           "mix-name", "mix-param", "loss-param", "mix-value", "pair-teacher", "pair-student", "lr", "epochs",
           "lr-nan", "student-entry", "mix-list-param", "schedule-list-param", "pmu-range", "resizemix-mode",
           "resizemix-scale", "bool",
           "schedule", "no-teachers", "empty-teachers", "no-name", "dataset", "grid-type", "seed", "exclude-type",
           "mix-name-list", "dataset-name-list", "student-model-list", "num-classes", "train-size", "val-size",
           "cifar-train-size", "cifar-train-size-batch", "batch-size", "student-batch-size", "student-repeated",
           "student-name-repeated", "exclude-teacher",
           "alpha-zero", "teacher-alpha", "loss-weight", "include-loss-weight", "crd-nce-temperature",
           "crd-momentum", "vid-variance", "transmix-no-cls-token",
           "manifold-stage", "manifold-stage-teacher", "name-up", "name-absolute", "name-dot", "name-empty"]


@pytest.mark.parametrize("mutate, path, says", BAD, ids=BAD_IDS)
def test_validation_error_is_one_line_naming_path_and_allowed(mutate, path, says):
    with pytest.raises(ConfigError) as e:
        parse_study(_bad(mutate))
    msg = str(e.value)
    assert "\n" not in msg
    assert e.value.path == path and msg.startswith(f"{path}: ")
    for text in says:
        assert text in msg


@pytest.mark.parametrize("mutate, path, says", BAD[:6], ids=BAD_IDS[:6])
def test_validation_error_from_a_file_starts_with_its_path(tmp_path, mutate, path, says):
    file = write(tmp_path, _bad(mutate))
    with pytest.raises(ConfigError) as e:
        load_study(file)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{file}: {path}: ")
    assert e.value.source == str(file) and e.value.path == path


def test_a_repeated_key_is_refused_with_its_lines(tmp_path):
    file = write(tmp_path, "name: t\ndataset: digits\nteachers:\n  t1: {model: cnn_wide}\n  t1: {model: cnn_small}\n"
                           "students: [cnn_tiny]\n")
    with pytest.raises(ConfigError, match=rf"^{file}: teachers.t1: repeated \(lines 4 and 5\); YAML would keep the "
                                          r"last silently: remove one$"):
        load_study(file)
    anchors = "name: t\ndataset: digits\nbase: &b {model: cnn_wide}\nteachers: {t1: *b, t2: *b}\nstudents: [a]\n"
    with pytest.raises(ConfigError, match=r"base: unknown key"):  # aliases are walked once, not as repeats
        load_study(write(tmp_path, anchors))


def test_an_exclude_that_matches_nothing_is_a_warning():
    with pytest.warns(StudyWarning, match=r"exclude\[1\] matches no point of the grid"):
        parse_study(study(exclude=[{"mix": "mixup"}, {"temperature": 8}]))


@pytest.mark.parametrize("overrides, says", [
    ({"grid": {"loss": ["ce", "kd"], "mix": ["mixup"], "seeds": [0]}},
     "student t1→s1 (mix mixup, T 4, view student, loss ce, seed 0) = scratch s1 (mix mixup, seed 0)"),
    ({"grid": {"mix": ["cutmix", "transmix"], "mixed_view": ["teacher"], "seeds": [0]}, "baselines": False},
     "(mix transmix, T 4, view teacher, loss kd, seed 0) = student t1→s1 (mix cutmix, T 4, view teacher"),
    ({"teachers": {"t1": {"model": "cnn_tiny"}}, "grid": {"seeds": [0]}},
     "scratch s1 (mix none, seed 0) = teacher t1 (mix none, seed 0)"),
    ({"grid": {"mix": ["mixup_cutmix", "mixup_transmix"], "mixed_view": ["teacher"], "seeds": [0]},
      "baselines": False},
     "(mix mixup_transmix, T 4, view teacher, loss kd, seed 0) = student t1→s1 (mix mixup_cutmix, T 4"),
], ids=["ce-student", "transmix-teacher-view", "teacher-is-scratch", "deit-transmix-teacher-view"])
def test_runs_that_repeat_another_run_are_a_warning(overrides, says):
    with pytest.warns(StudyWarning, match="would train what another run trains") as caught:
        parse_study(study(**overrides))
    assert says in str(caught[0].message)


def test_a_study_without_repeats_warns_of_none(recwarn):
    parse_study(study())
    assert not [w for w in recwarn if issubclass(w.category, StudyWarning)]


def test_warnings_are_one_line_each_on_the_command_line(tmp_path, capsys):
    path = write(tmp_path, study(exclude=[{"temperature": 8}]))
    assert cli.main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == f"mixkd: warning: {path}: exclude[0] matches no point of the grid\n"


def test_file_not_found(tmp_path):
    with pytest.raises(MixkdError, match="study file not found: .*missing.yaml$"):
        load_study(tmp_path / "missing.yaml")


def test_invalid_yaml_is_one_line(tmp_path):
    file = write(tmp_path, "name: t\ngrid: {mix: [none, mixup}\n")
    with pytest.raises(MixkdError) as e:
        load_study(file)
    msg = str(e.value)
    assert msg.startswith(f"{file}: not valid YAML") and "\n" not in msg


def test_empty_file_says_what_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"study\.yaml: name: is required$"):
        load_study(write(tmp_path, ""))


def test_non_mapping_study_has_no_empty_path(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_study(write(tmp_path, "- a\n- b\n"))
    assert ": : " not in str(e.value)


def test_students_shorthand_in_files(tmp_path):
    s = load_study(write(tmp_path, study(students=["cnn_tiny", {"name": "small", "model": "cnn_small"}])))
    assert {r.labels["name"] for r in by_role(s, "scratch")} == {"cnn_tiny", "small"}
    assert {r.config["model"] for r in by_role(s, "scratch")} == {"cnn_tiny", "cnn_small"}


def test_model_args_are_hashed_and_timm_names_pass():
    s = parse_study(study(students={"vit": {"model": "timm/vit_tiny_patch16_224", "model_args": {"patch_size": 4}}}))
    assert {r.config["model_args"]["patch_size"] for r in s.runs if r.role != "teacher"} == {4}
    other = parse_study(study(students={"vit": {"model": "timm/vit_tiny_patch16_224", "model_args": {"patch_size": 8}}}))
    assert {r.run_id for r in by_role(s, "student")}.isdisjoint(r.run_id for r in by_role(other, "student"))
    assert ids(s)[:2] == ids(other)[:2]  # the teachers


def test_checkpoint_teacher_is_identified_by_content(tmp_path):
    for name, seed in (("a.pth", 0), ("c.pth", 1)):
        torch.manual_seed(seed)
        torch.save({"model": create_model("cnn_wide", 10, 1, 8).state_dict()}, tmp_path / name)
    (tmp_path / "b.pth").write_bytes((tmp_path / "a.pth").read_bytes())

    def teacher_id(ckpt):
        raw = study(teachers={"t1": {"model": "cnn_wide", "checkpoint": ckpt}})
        return load_study(write(tmp_path, raw)).runs[0].run_id

    assert teacher_id("a.pth") == teacher_id("b.pth") == teacher_id(str(tmp_path / "a.pth")) != teacher_id("c.pth")
    with pytest.raises(ConfigError, match=r"teachers\.t1\.checkpoint: checkpoint file not found"):
        teacher_id("missing.pth")


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_dry_run_prints_runs_and_count_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    path = STUDIES / "quickstart.yaml"
    assert cli.main(["run", str(path), "--dry-run", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for spec in load_study(path).runs:
        assert spec.run_id in text
    c = quickstart_counts()
    n = sum(c.values())
    count, time = text.rstrip().splitlines()[-2:]
    assert count == (f"{n} runs ({c['teacher']} teacher, {c['scratch']} scratch, {c['student']} student); "
                     f"{n} to train; output {out}")
    assert time.startswith("time: not estimated; --estimate times a few steps of each of the 10 kinds of run")
    assert not out.exists()


def test_cli_ls_prints_statuses(tmp_path, capsys):
    out, path = tmp_path / "out", STUDIES / "quickstart.yaml"
    first = load_study(path).runs[0]
    RunDir(out, first.run_id).write_summary({"run_id": first.run_id, "status": "complete", "top1_last": 0.75})
    assert cli.main(["ls", str(path), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    n = sum(quickstart_counts().values())
    assert len(lines) == 2 + n and "status" in lines[0] and lines[-1].startswith("ETA: ")
    row = next(line for line in lines if first.run_id in line)
    assert "complete" in row and "0.75" in row
    assert sum("pending" in line for line in lines) == n - 1
    assert cli.main(["run", str(path), "--dry-run", "--out", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-2].endswith(f"{n - 1} to train; output {out}")


@pytest.mark.parametrize("kind, registry", [("mixers", mixing.MIXERS), ("losses", losses.LOSSES),
                                            ("datasets", data.DATASETS), ("metrics", metrics.METRICS),
                                            ("schedules", schedules.SCHEDULES)])
def test_cli_list_prints_registered_names(capsys, kind, registry):
    assert cli.main(["list", kind]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert (set(names) >= set(registry.names()) if kind == "metrics" else names == registry.names())
    assert len(names) >= 3


@pytest.mark.parametrize("args", [["models", "resnet2*", "--dataset", "cifar100"],
                                  ["models", "--dataset", "cifar100", "resnet2*"]], ids=["before", "after"])
def test_cli_list_models_with_pattern_before_or_after_the_options(capsys, args):
    assert cli.main(["list", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines if line.startswith("resnet")] == [["resnet20", "0.28"]]


@pytest.mark.parametrize("kind, pattern, names", [("mixers", "*mixup", ["manifold_mixup", "mixup"]),
                                                  ("schedules", "cos", ["cosine"]),
                                                  ("models", "shuffle", ["ShuffleV1", "ShuffleV2"])])
def test_cli_list_pattern_filters_by_shell_pattern_or_substring(capsys, kind, pattern, names):
    assert cli.main(["list", kind, pattern]) == 0
    printed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1 if kind == "models" else 0:]
               if line and not line.startswith((" ", "timm/"))]
    assert printed == names


@pytest.mark.parametrize("kind, name, says", [
    ("mixers", "pmu", "prob=1.0  alpha=1.0  mixed_fraction=0.1  reference_sampling=False"),
    ("mixers", "manifold_mixup", "prob=1.0  alpha=2.0  stages=[0, 1, 2]  per_sample=False"),
    ("losses", "kd", "ce_weight=0.1  kd_weight=0.9  standardise=None"),
    ("losses", "crd", "paper: Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020"),
    ("losses", "crd", "mixed views: none, both"),
    ("losses", "ofd", "taps: preact"),
    ("schedules", "multistep", "milestones=[150, 180, 210]  gamma=0.1"),
    ("datasets", "cifar100", "download=False  val_size=0  split_seed=0  train_size=None"),
])
def test_cli_list_shows_each_components_parameters_and_defaults(capsys, kind, name, says):
    assert cli.main(["list", kind, name]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.split()[0] == name)  # `kd` also finds dkd and std_kd
    block = lines[at + 1:next((i for i in range(at + 1, len(lines)) if not lines[i].startswith(" ")), None)]
    assert says.split() in [line.split() for line in block]


def test_cli_debug_is_taken_after_the_command_too(tmp_path):
    path = write(tmp_path, study(grid={"mixed_view": ["studnet"]}))
    with pytest.raises(ConfigError, match="studnet"):
        cli.main(["run", str(path), "--dry-run", "--debug"])


@pytest.mark.parametrize("command", ["run", "ls", "report"])
def test_cli_bad_study_exits_2_with_one_line(tmp_path, capsys, command):
    path = write(tmp_path, study(grid={"mixed_view": ["studnet"]}))
    args = [command, str(path), "--out", str(tmp_path / "out")] + (["--dry-run"] if command == "run" else [])
    assert cli.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"mixkd: error: {path}: grid.mixed_view[0]: 'studnet' is not allowed")
    assert captured.err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_cli_output_into_a_closed_pipe_prints_no_traceback():
    ls = subprocess.Popen([sys.executable, "-m", "mixkd.cli", "ls", str(STUDIES / "quickstart.yaml")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    ls.stdout.close()  # `mixkd ls | head -0`: the reader is gone before anything is written
    assert ls.stderr.read() == b"" and ls.wait() == 141
    ls.stderr.close()


def test_cli_missing_study_exits_2(tmp_path, capsys):
    assert cli.main(["ls", str(tmp_path / "nope.yaml")]) == 2
    assert capsys.readouterr().err.startswith("mixkd: error: study file not found")
    assert cli.main(["ls", "no_such_study_name"]) == 2
    assert "no studies/no_such_study_name.yaml" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- shipped studies

RESNET_DEPTH = {"resnet110": 110, "resnet56": 56, "resnet44": 44, "resnet32": 32, "resnet20": 20, "resnet14": 14,
                "resnet8": 8}


def _mixkd_paper_count() -> int:
    teachers = ["resnet110", "resnet56", "resnet44", "resnet32", "resnet20"]
    students = ["resnet56", "resnet44", "resnet32", "resnet20", "resnet14", "resnet8"]
    cells = sum(RESNET_DEPTH[t] > RESNET_DEPTH[s] for t, s in itertools.product(teachers, students))  # 20
    # plain + Mix-T teachers; mixes: none, FMU, PMU exact, PMU reference; T {1, 4}; views both/student;
    # losses std_kd/kd; 3 seeds.
    return expected_runs(2 * len(teachers), len(students), 2 * cells, ["none", "fmu", "pmu", "pmu"], 2,
                         ["both", "student"], 2, 3)


EXPECTED = {
    "mixkd_paper": (_mixkd_paper_count(), 3442),
    # 4 teachers; 4 students × 5 mixes × 3 seeds; 4 pairs × 5 mixes × T 4 × view student × kd × 3 seeds.
    "kd_baselines": (expected_runs(4, 4, 4, ["none", "mixup", "cutmix", "fmu", "pmu"], 1, ["student"], 1, 3), 124),
    # 1 teacher; 1 student × 6 mixes × 3 seeds; (grid KD + the DeiT-soft include) × 6 mixes × 3 seeds.
    "transmix_cifar": (expected_runs(1, 1, 1, ["none", "mixup", "cutmix", "transmix", "mixup_cutmix",
                                               "mixup_transmix"], 1, ["both"], 1, 3) + 6 * 3, 55),
}


@pytest.fixture(scope="module")
def shipped():
    return {name: load_study(STUDIES / f"{name}.yaml") for name in EXPECTED}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_study_expands_to_the_formula(shipped, name):
    formula, literal = EXPECTED[name]
    s = shipped[name]
    assert len(s.runs) == formula == literal
    assert len(set(ids(s))) == len(s.runs)
    assert s.dataset.name == "cifar100"
    assert (STUDIES / f"{name}.yaml").read_text().startswith("# ")  # a header saying what it reproduces


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shipped_study_dry_run_and_ls(tmp_path, capsys, monkeypatch, shipped, name):
    # The CLI gets the study the fixture already loaded from the same file (mixkd_paper takes seconds to expand).
    import mixkd.study

    cached = {(STUDIES / f"{n}.yaml").resolve(): s for n, s in shipped.items()}
    monkeypatch.setattr(mixkd.study, "load_study", lambda path: cached[Path(path).resolve()])
    out = tmp_path / name
    assert cli.main(["run", str(STUDIES / f"{name}.yaml"), "--dry-run", "--out", str(out)]) == 0
    last = capsys.readouterr().out.rstrip().splitlines()[-2]  # then how to time it: --estimate
    n = EXPECTED[name][1]
    assert last.startswith(f"{n} runs (") and last.endswith(f"{n} to train; output {out}")
    if n < 200:
        assert cli.main(["ls", name, "--out", str(out)]) == 0  # by name, found in the checkout's studies/
        assert capsys.readouterr().out.count("pending") == n
    assert not out.exists()


def test_mixkd_paper_grid(shipped):
    s = shipped["mixkd_paper"]
    teachers = by_role(s, "teacher")
    assert Counter(r.config["mix"]["name"] for r in teachers) == {"none": 5, "mixup": 5}
    students = by_role(s, "student")
    for r in students:  # only heatmap cells: a deeper teacher than student
        assert RESNET_DEPTH[s.file.teachers[r.labels["teacher"]].model] > RESNET_DEPTH[r.config["model"]]
    assert len({(r.labels["teacher"], r.labels["student"]) for r in students}) == 40
    mixes = {tuple(sorted(r.config["mix"].items())) for r in students}
    assert {(m["name"], m.get("reference_sampling")) for m in map(dict, mixes)} == {
        ("none", None), ("fmu", None), ("pmu", False), ("pmu", True)}
    assert {r.config["mix"].get("mixed_fraction") for r in students if r.config["mix"]["name"] == "pmu"} == {0.1}
    assert {r.config["distill"]["temperature"] for r in students} == {1.0, 4.0}
    assert {r.config["distill"]["mixed_view"] for r in students} == {"none", "both", "student"}
    assert {(r.config["distill"]["loss"]["name"], r.config["distill"]["loss"]["ce_weight"],
             r.config["distill"]["loss"]["kd_weight"]) for r in students} == {("std_kd", 0.1, 0.9), ("kd", 0.1, 0.9)}
    assert {r.config["seed"] for r in students} == {0, 1, 2}
    recipes = {str(r.config["recipe"]) for r in s.runs}
    assert len(recipes) == 1
    recipe = s.runs[0].config["recipe"]
    assert (recipe["epochs"], recipe["lr"], recipe["batch_size"], recipe["weight_decay"], recipe["momentum"]) == \
        (240, 0.05, 64, 5e-4, 0.9)
    assert recipe["schedule"] == {"name": "multistep", "milestones": [150, 180, 210], "gamma": 0.1}


def test_kd_baselines_grid(shipped):
    s = shipped["kd_baselines"]
    students = by_role(s, "student")
    pairs = {(s.file.teachers[r.labels["teacher"]].model, r.config["model"]) for r in students}
    assert pairs == {("resnet56", "resnet20"), ("wrn_40_2", "wrn_16_2"), ("resnet32x4", "resnet8x4"),
                     ("vgg13", "vgg8")}
    assert {r.config["mix"]["name"] for r in students} == {"none", "mixup", "cutmix", "fmu", "pmu"}
    assert {r.config["distill"]["temperature"] for r in students} == {4.0}
    assert {r.config["distill"]["mixed_view"] for r in students} == {"none", "student"}
    assert {str(r.config["distill"]["loss"]) for r in students} == {
        str({"name": "kd", "ce_weight": 0.1, "kd_weight": 0.9})}
    assert {(r.config["recipe"]["lr"], r.config["recipe"]["epochs"]) for r in s.runs} == {(0.05, 240)}


def test_transmix_cifar_grid(shipped):
    s = shipped["transmix_cifar"]
    (teacher,) = by_role(s, "teacher")
    assert teacher.config["model"] == "resnet32x4"
    assert teacher.config["recipe"]["schedule"]["name"] == "multistep" and teacher.config["recipe"]["epochs"] == 240
    vit = [r for r in s.runs if r.role != "teacher"]
    assert {r.config["model"] for r in vit} == {"timm/deit_tiny_patch16_224"}
    assert all(r.config["model_args"]["patch_size"] == 4 for r in vit)
    assert {(r.config["recipe"]["schedule"]["name"], r.config["recipe"]["schedule"]["sched"]) for r in vit} == {
        ("timm", "cosine")}
    assert all(r.config["recipe"]["schedule"]["warmup_epochs"] == 20 for r in vit)
    # TransMix's DeiT-S recipe: AdamW, RandAugment, an EMA of the weights; the CNN teacher keeps SGD
    assert {(r.config["recipe"]["optimizer"]["name"], r.config["recipe"]["augment"], r.config["recipe"]["ema_decay"])
            for r in vit} == {("adamw", "rand-m9-mstd0.5-inc1", 0.99996)}
    assert not {"optimizer", "augment", "ema_decay"} & set(teacher.config["recipe"])
    assert {r.config["mix"]["name"] for r in by_role(s, "scratch")} == {"none", "mixup", "cutmix", "transmix",
                                                                         "mixup_cutmix", "mixup_transmix"}
    students = by_role(s, "student")
    assert {r.config["distill"]["mixed_view"] for r in students} == {"none", "both"}
    assert {(r.config["distill"]["temperature"], r.config["distill"]["loss"]["kd_weight"]) for r in students} == {
        (4.0, 0.9), (3.0, 0.1)}


def test_transmix_imagenet_reads_without_its_data_and_runs_transmix_recipe():
    s = load_study(STUDIES / "transmix_imagenet.yaml")
    assert len(s.runs) == 11 and s.dataset.name == "imagefolder"
    teachers = by_role(s, "teacher")
    assert {(t.config["model"], t.config["mix"]["name"]) for t in teachers} == {
        ("timm/deit_small_patch16_224", "mixup_cutmix"), ("timm/deit_small_patch16_224", "mixup_transmix")}
    assert {(t.config["mix"]["mixup_alpha"], t.config["mix"]["cutmix_alpha"], t.config["mix"]["switch_prob"])
            for t in teachers} == {(0.8, 1.0, 0.5)}
    recipes = [r.config["recipe"] for r in s.runs]
    assert {(r["optimizer"]["name"], r["lr"], r["weight_decay"], r["epochs"], r["augment"], r["ema_decay"])
            for r in recipes} == {("adamw", 1e-3, 0.03, 310, "rand-m9-mstd0.5-inc1", 0.99996)}
    assert {(r["schedule"]["name"], r["schedule"]["warmup_epochs"], r["schedule"]["cooldown_epochs"])
            for r in recipes} == {("timm", 20, 10)}
    assert (STUDIES / "transmix_imagenet.yaml").read_text().startswith("# ")


@pytest.mark.parametrize("overrides, path", [
    ({"recipe": {"epochs": 0}}, "recipe.epochs"),
    ({"recipe": {"lr": -0.1}}, "recipe.lr"),
    ({"recipe": {"label_smoothing": 1.0}}, "recipe.label_smoothing"),
    ({"grid": {"temperature": [0]}}, r"grid.temperature\[0\]"),
    ({"grid": {"mix": [{"name": "mixup", "prob": 1.5}]}}, r"grid.mix\[0\].prob"),
    ({"grid": {"seeds": []}}, "grid.seeds"),
])
def test_out_of_range_values_are_rejected(overrides, path):
    with pytest.raises(ConfigError, match=path):
        parse_study(study(**overrides))


def test_model_args_are_coerced_for_zoo_models_and_tried_on_timm_models():
    s = parse_study(study(students={"s": {"model": "cnn_tiny", "model_args": {"drop_rate": "1e-1"}}}))
    assert by_role(s, "student")[0].config["model_args"] == {"drop_rate": 0.1}  # YAML's 1e-1 is a string
    vit = "timm/vit_tiny_patch16_224"
    with pytest.raises(ConfigError, match=r"students.s.model_args: timm/vit_tiny_patch16_224 rejects them: "
                                          r"TypeError: .*unexpected keyword argument 'patch_sise'"):
        parse_study(study(students={"s": {"model": vit, "model_args": {"patch_sise": 4}}}))


def test_unknown_timm_model_is_caught_at_parse_time_with_suggestions():
    with pytest.raises(ConfigError, match=r"students.s1.model: unknown timm model .*timm/deit_tiny_patch16_224"):
        parse_study(study(students={"s1": {"model": "timm/deit_tiny_patch16_22"}}))


def test_checkpoint_teacher_rejects_settings_it_would_ignore(tmp_path):
    (tmp_path / "t.pth").write_bytes(b"x")
    raw = study(teachers={"t1": {"model": "cnn_wide", "checkpoint": "t.pth", "mix": "mixup"}})
    with pytest.raises(ConfigError, match=r"teachers.t1.mix: has no effect"):
        load_study(write(tmp_path, raw))


def test_parse_study_takes_the_students_shorthand():
    s = parse_study(study(students=["cnn_tiny"]))
    assert {r.labels["student"] for r in by_role(s, "scratch")} == {"cnn_tiny"}
