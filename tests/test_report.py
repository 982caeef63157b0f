"""Reports: the runs table's schema and variants, statistics against scipy and hand-computed values, the
leaderboard, every figure on a paper-sized grid and on a trained study (legible, its numbers those of
summary.csv), the HTML report, the notebooks, and an output folder that knows its study."""

import json
import re
import sys
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from figure_checks import layout_problems
from scipy import stats
from synthetic import last_runs, write_synthetic_tables
from tiny import RECIPE, run, tiny_study, write

from mixkd import columns
from mixkd.cli import main
from mixkd.compare import first_difference
from mixkd.report import write_statistics_tables
from mixkd.report.figures import FIGURES, render, save
from mixkd.report.leaderboard import leaderboard_table
from mixkd.report.stats import comparisons_table, summary_table
from mixkd.study import load_study, parse_study
from mixkd.tables import build_runs_table, read_tables

REPO = Path(__file__).resolve().parents[1]

# ---- a grid with every axis varying, and known accuracies --------------------------------------------------

GRID = tiny_study("grid",
                  teachers={"t": {"model": "cnn_small"}, "t_mix": {"model": "cnn_small", "mix": "mixup"}},
                  students=["cnn_tiny", {"name": "tiny_lr", "model": "cnn_tiny", "recipe": {"lr": 0.01}}],
                  grid={"mix": ["none", "mixup", {"name": "pmu", "mixed_fraction": 0.5},
                                {"name": "pmu", "mixed_fraction": 0.5, "reference_sampling": True}],
                        "temperature": [1, 4], "mixed_view": ["student", "both"],
                        "loss": ["kd", {"name": "kd", "ce_weight": 0.5, "kd_weight": 0.5}],
                        "seeds": [0, 1, 2]})
KD = "kd(ce_weight=0.1,kd_weight=0.9)"  # the grid's default KD loss, as labels name it beside the 0.5/0.5 one
NOISE = {0: 0.0, 1: 0.01, 2: -0.004}  # per seed: shared by every variant (common random numbers)


def accuracy(spec) -> float:
    """A known top-1 per run: effects of role, mix, view, T and teacher, seed noise, and for mixup-both at T=4
    a per-seed interaction (so its differences have variance)."""
    c, d = spec.config, spec.config["distill"]
    acc = {"teacher": 0.9, "scratch": 0.6, "student": 0.7}[c["role"]] + NOISE[c["seed"]]
    acc += ({"none": 0.0, "mixup": 0.02, "pmu": 0.01}[c["mix"]["name"]]
            + 0.005 * c["mix"].get("reference_sampling", False))
    if d:
        acc += 0.003 * d["temperature"] + (0.004 if d["mixed_view"] == "both" else 0.0)
        acc -= 0.01 if spec.labels["teacher"] == "t_mix" else 0.0
        if c["mix"]["name"] == "mixup" and d["mixed_view"] == "both" and d["temperature"] == 4:
            acc += (0.002, 0.007, -0.003)[c["seed"]]
    return round(acc, 6)


def runs_of(study, value=accuracy, seeds=None) -> pd.DataFrame:
    summaries = {r.run_id: {"run_id": r.run_id, "status": "complete", "top1_last": value(r),
                            "top1_best": value(r)}
                 for r in study.runs if seeds is None or r.config["seed"] in seeds}
    return build_runs_table(study, summaries)


NO_METRICS = pd.DataFrame(columns=["run_id", "metric", "value"])


@pytest.fixture(scope="module")
def grid():
    return parse_study(GRID)


# ---- schema and variants -----------------------------------------------------------------------------------

def test_every_runs_column_has_a_declared_kind_and_an_undeclared_one_is_refused(grid):
    runs = runs_of(grid)
    assert {columns.kind(c) for c in runs.columns} <= set(columns.KINDS)
    assert columns.kind("seed") == "seed" and columns.kind("mix_alpha") == "config"
    assert columns.kind("engine_precision") == "execution" and columns.kind("hostname") == "provenance"
    assert columns.kind("wall_seconds") == "timing" and columns.kind("top1_last") == "result"
    spec = grid.runs[0]
    with pytest.raises(ValueError, match="mystery.*no declared kind"):
        build_runs_table(grid, {spec.run_id: {"status": "complete", "mystery": 1}})


def test_a_variant_is_every_config_axis_but_the_seed(grid):
    runs = runs_of(grid)
    per_variant = runs.groupby("variant_id")
    seeds = per_variant["seed"].nunique()  # the seeds, and nothing else, differ within a variant
    teachers = runs.loc[runs["role"] == "teacher", "variant_id"]
    assert (seeds.drop(teachers) == 3).all() and (seeds[teachers] == 1).all()
    config = columns.of_kind(runs, "config")
    assert (per_variant[config].nunique(dropna=False) <= 1).all().all()
    assert (per_variant["variant"].nunique().max() == 1
            and runs.groupby("variant")["variant_id"].nunique().max() == 1)


def test_variant_labels_name_only_the_axes_that_vary(grid):
    labels = set(runs_of(grid)["variant"])
    assert "t→cnn_tiny · pmu(reference_sampling) · both · T=4 · kd(ce_weight=0.5,kd_weight=0.5)" in labels
    assert f"t_mix→tiny_lr · pmu · student · T=1 · {KD}" in labels  # the student's name, not its model
    assert f"t→cnn_tiny · none · T=1 · {KD}" in labels  # no view where nothing is mixed
    assert {"teacher t", "teacher t_mix", "tiny_lr from scratch · mixup",
            "cnn_tiny from scratch · none"} <= labels
    small = parse_study(tiny_study("small", grid={"mix": ["none", "mixup"], "temperature": [4],
                                                  "mixed_view": ["both"], "seeds": [0]}))
    assert set(runs_of(small, seeds={0})["variant"]) == {"teacher t", "cnn_tiny from scratch · none",
                                                          "cnn_tiny from scratch · mixup", "none", "mixup"}


def test_every_column_of_a_trained_study_has_a_kind(trained):
    runs = read_tables(trained).runs
    assert {columns.kind(c) for c in runs.columns} <= set(columns.KINDS)
    assert runs["seed"].dtype == "Int64" and runs["epochs"].dtype == "Int64"


# ---- summary -----------------------------------------------------------------------------------------------

def test_summary_pools_seeds_only_with_t_intervals_inside_the_metric_range(grid):
    runs = runs_of(grid)
    s = summary_table(runs, NO_METRICS)
    top1 = s[s["metric"] == "top1_last"]
    assert len(top1) == runs["variant_id"].nunique() and (top1.loc[top1["role"] != "teacher", "n"] == 3).all()
    row = top1[top1["variant"] == f"t→cnn_tiny · mixup · both · T=4 · {KD}"].iloc[0]
    v = runs.loc[runs["variant"] == row["variant"], "top1_last"].to_numpy()
    half = stats.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    assert (row["mean"], row["std"]) == pytest.approx((v.mean(), v.std(ddof=1)))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((v.mean() - half, v.mean() + half))
    # a proportion near 100% with two seeds: the t-interval passes 1, the reported one stops there
    near = runs.assign(top1_last=np.where(runs["seed"] == 0, 0.999, 0.97))
    two = summary_table(near[near["seed"] < 2], NO_METRICS)
    t2 = two[(two["metric"] == "top1_last") & (two["role"] != "teacher")]
    assert (t2["ci_high"] == 1.0).all() and (t2["ci_low"] >= 0).all() and (t2["mean"] < 1).all()


def test_summary_csv_and_parquet_hold_one_table(trained):
    csv = pd.read_csv(trained / "summary.csv", keep_default_na=False, na_values=[""])
    parquet = pd.read_parquet(trained / "summary.parquet")
    assert list(csv.columns) == list(parquet.columns) and len(csv) == len(parquet)
    for column in ("variant_id", "metric", "n"):
        assert (csv[column].astype(str) == parquet[column].astype(str)).all()
    assert np.allclose(csv["mean"], parquet["mean"], equal_nan=True)


# ---- comparisons -------------------------------------------------------------------------------------------

def test_comparisons_run_along_every_axis_that_varies(grid):
    c = comparisons_table(runs_of(grid), NO_METRICS)
    assert set(c["axis"]) == {"mix", "temperature", "mixed_view", "loss", "teacher_mix", "student",
                              "distillation"}
    assert set(c["metric"]) == {"top1_last"}
    mix = c[c["axis"] == "mix"]
    assert set(mix["a"]) == {"none"} and set(mix["b"]) == {"mixup", "pmu", "pmu(reference_sampling)"}
    teacher = c[c["axis"] == "teacher_mix"]
    assert set(zip(teacher["a"], teacher["b"])) == {("t", "t_mix")}  # a Mix-T teacher against its plain one
    assert (teacher["mean_diff"].round(9) == -0.01).all() and teacher["teacher"].isna().all()
    assert set(zip(*c.loc[c["axis"] == "student", ["a", "b"]].to_numpy().T)) == {("cnn_tiny", "tiny_lr")}
    kd = c[c["axis"] == "distillation"]
    assert set(kd["a"]) == {"from scratch"} and len(kd) == len(GRID_KD_VARIANTS(grid))
    assert set(c.loc[c["axis"] == "mixed_view", "b"]) == {"both"}
    assert set(zip(c.loc[c["axis"] == "temperature", "a"],
                   c.loc[c["axis"] == "temperature", "b"])) == {("1", "4")}


def GRID_KD_VARIANTS(study):  # noqa: N802 - a constant of the grid, computed
    return {r.run_id for r in study.runs if r.role == "student" and r.config["seed"] == 0}


def test_a_comparison_reproduces_scipy_and_hand_computed_statistics(grid):
    runs = runs_of(grid)
    c = comparisons_table(runs, NO_METRICS)
    row = c[(c["axis"] == "mix") & (c["b"] == "mixup") & (c["mixed_view"] == "both") & (c["temperature"] == 4)
            & (c["teacher"] == "t") & (c["student"] == "cnn_tiny") & (c["loss"] == KD)].iloc[0]
    pick = runs.set_index("variant")["top1_last"]
    a = pick.loc[f"t→cnn_tiny · none · T=4 · {KD}"].to_numpy()
    b = pick.loc[f"t→cnn_tiny · mixup · both · T=4 · {KD}"].to_numpy()
    d = b - a
    t = stats.ttest_rel(b, a)
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert row["n"] == 3 and row["mean_diff"] == pytest.approx(d.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert (row["t_stat"], row["t_pvalue"]) == pytest.approx((t.statistic, t.pvalue))
    assert row["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(d).pvalue)
    assert row["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))  # Cohen's d_z
    assert (row["mean_a"], row["mean_b"]) == pytest.approx((a.mean(), b.mean()))


def test_p_values_are_adjusted_across_the_study_and_nothing_is_claimed_below_three_seeds(grid):
    runs = runs_of(grid)
    c = comparisons_table(runs, NO_METRICS)
    family = c[c["t_pvalue"].notna()]
    expected = stats.false_discovery_control(family["t_pvalue"], method="bh")
    assert family["p_adjusted"].to_numpy() == pytest.approx(expected)
    assert (c["significant"] == (c["p_adjusted"] < 0.05)).all()
    assert c.loc[c["t_pvalue"].isna(), "verdict"].isin(["no variance", "no difference"]).all()
    assert (family["p_adjusted"] >= family["t_pvalue"]).all()
    two = comparisons_table(runs[runs["seed"] < 2], NO_METRICS)
    assert len(two) and (two["verdict"] == "too few seeds").all() and not two["significant"].any()
    assert two["p_adjusted"].isna().all()


def test_the_leaderboard_ranks_each_pairs_variants_against_its_two_baselines(grid):
    runs = runs_of(grid)
    summary, comparisons = summary_table(runs, NO_METRICS), comparisons_table(runs, NO_METRICS)
    board = leaderboard_table(summary, comparisons)
    assert len(board) == len(GRID_KD_VARIANTS(grid)) and board["variant_id"].is_unique
    for (teacher, student), rows in board.groupby(["teacher", "student"]):
        assert rows["rank"].min() == 1 and rows["top1"].is_monotonic_decreasing
        assert rows["rank"].is_monotonic_increasing
    best = board.iloc[0]
    cmp = comparisons[(comparisons["axis"] == "distillation")
                      & (comparisons["b_variant_id"] == best["variant_id"])]
    assert best["delta_vs_scratch"] == pytest.approx(cmp["mean_diff"].item())
    assert best["delta_vs_scratch_verdict"] == cmp["verdict"].item()
    plain = board[board["setting"].str.startswith("none")]
    assert (plain["delta_vs_kd_verdict"] == "reference").all() and plain["delta_vs_kd"].isna().all()
    teacher_top1 = summary.query("metric == 'top1_last' and role == 'teacher' and name == 't'")["mean"].item()
    assert (board.loc[board["teacher"] == "t", "teacher_top1"] == teacher_top1).all()


# ---- figures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """The tables of `studies/mixkd_paper.yaml` (3,442 runs) with known values, a few runs failed or pending,
    and their statistics: no training."""
    out = tmp_path_factory.mktemp("paper")
    study = load_study(REPO / "studies" / "mixkd_paper.yaml")
    write_synthetic_tables(study, out, num_classes=100, status=last_runs(study, failed=3, pending=2))
    write_statistics_tables(out)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small study trained and reported by `mixkd run` (two teachers, two mixes, two views, two T,
    2 seeds)."""
    tmp = tmp_path_factory.mktemp("trained")
    study = tiny_study("trained", recipe={**RECIPE, "lr": 0.05},
                       teachers={"t": {"model": "cnn_small"},
                                 "t_mix": {"model": "cnn_small", "mix": "mixup"}},
                       grid={"mix": ["none", "mixup"], "temperature": [1, 4],
                             "mixed_view": ["student", "both"], "seeds": [0, 1]})
    assert run(write(tmp, study), tmp / "out") == 0
    return tmp / "out"


def _drawn_matches_the_summary(data: pd.DataFrame, tables) -> None:
    keyed = data[data["variant_id"].notna()]
    if "metric" not in keyed:  # t-SNE: one run's map, from metrics.parquet
        maps = tables.metrics[tables.metrics["metric"] == "tsne"]
        merged = keyed.merge(maps, on=["run_id", "class", "x", "y"], how="left", indicator=True)
        assert (merged["_merge"] == "both").all()
        return
    keys = ["variant_id", "metric", "metric_temperature", "attack", "epsilon", "bin", "class"]
    summary = tables.summary.astype({"class": float})
    merged = keyed.astype({"class": float}).merge(summary, on=keys, how="left", suffixes=("", "_summary"))
    assert len(merged) == len(keyed) and merged["mean_summary"].notna().all()
    for value in ("mean", "ci_low", "ci_high", "n"):
        assert np.allclose(merged[value], merged[f"{value}_summary"], equal_nan=True), value


@pytest.mark.parametrize("fixture", ["paper", "trained"])
def test_every_figure_is_legible_and_draws_the_numbers_of_summary_csv(fixture, request):
    tables = read_tables(request.getfixturevalue(fixture))
    kd_pairs = set(tables.runs.loc[tables.runs["role"] == "student", ["teacher", "student"]]
                   .itertuples(index=False))
    drawn = set()
    for name in FIGURES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # constrained layout not applied, tight layout failing, ...
            data, pages = render(name, tables)
            problems = [f"{name} page {i}: {p}"
                        for i, fig in enumerate(pages, 1) for p in layout_problems(fig)]
        assert not problems, problems[:10]
        if not pages:
            continue
        drawn.add(name)
        assert sorted(data["page"].unique()) == list(range(1, len(pages) + 1))
        _drawn_matches_the_summary(data, tables)
        if name == "accuracy_by_mix":  # one panel per pair the study has, no other
            panels = data.loc[data["kind"] == "distilled", "panel"].unique()
            assert {tuple(p.split(" · ")[0].split("→")) for p in panels} == {tuple(p) for p in kd_pairs}
        for fig in pages:
            _accuracy_axes_within_0_and_100(fig)
            plt.close(fig)
    assert drawn == set(FIGURES) - {"transmix"}  # no transmix in either study


def _accuracy_axes_within_0_and_100(fig) -> None:
    for ax in fig.axes:
        for get, label in ((ax.get_xlim, ax.get_xlabel()), (ax.get_ylim, ax.get_ylabel())):
            if "top-1 (%)" in label:
                lo, hi = sorted(get())
                assert 0 <= lo and hi <= 100, (label, lo, hi)
                for line in ax.get_lines():  # baselines and points all inside the axis
                    values = line.get_xdata() if get == ax.get_xlim else line.get_ydata()
                    v = np.asarray(values, float)
                    assert ((v[np.isfinite(v)] >= lo - 1e-9) & (v[np.isfinite(v)] <= hi + 1e-9)).all()


def test_the_paper_grid_splits_figures_into_pages_and_pools_nothing_but_seeds(paper):
    tables = read_tables(paper)
    data, pages = render("accuracy_by_mix", tables)
    assert len(pages) > 1
    kd = data[data["kind"] == "distilled"]
    assert kd["variant_id"].is_unique  # one dot per variant
    assert kd.groupby(["panel", "series", "hue"]).size().max() == 1
    assert kd["variant_id"].nunique() == tables.summary.query("role == 'student' and metric == 'top1_last'")[
        "variant_id"].nunique()
    heat = render("accuracy_heatmap", tables, page=1)
    assert len(heat[1]) == 1 and heat[0]["page"].max() > 1  # one page asked, all pages' numbers returned


@pytest.mark.parametrize("figure", ["accuracy_vs_temperature", "accuracy_by_mix"])
def test_each_panel_draws_its_own_teacher_and_student_from_scratch(paper, figure):
    """The references are the panel's own: its teacher, its student from scratch, once each (a panel once
    took the one before's scratch line, leaving that panel without one)."""
    tables = read_tables(paper)
    data, _ = render(figure, tables)
    refs = data[data["kind"].isin(["teacher", "scratch"])]
    assert (refs.groupby(["panel", "kind"]).size() == 1).all()
    assert set(refs.loc[refs["kind"] == "scratch", "panel"]) == set(data.loc[data["kind"] == "distilled", "panel"])
    names = tables.variants.set_index("variant_id")["name"]
    for panel, rows in refs.groupby("panel"):
        teacher, student = panel.split(" ")[0].split("→")
        assert set(rows["variant_id"].map(names)) == {teacher, student}, panel


@pytest.mark.parametrize("done", ["teachers and scratch", "nothing"])
def test_figures_draw_what_has_finished_and_nothing_else(grid, tmp_path, done):
    finished = {"teachers and scratch": ("teacher", "scratch"), "nothing": ()}[done]
    write_synthetic_tables(grid, tmp_path, 4,
                           status=lambda r: "complete" if r.role in finished else "pending")
    tables = write_statistics_tables(tmp_path)
    drawn = {name for name in FIGURES if render(name, tables)[1]}
    assert drawn == ({"teacher_entropy", "reliability", "robustness", "tsne"} if finished else set())
    assert tables.leaderboard.empty and tables.comparisons["axis"].isin(["mix", "student"]).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_figures_stay_legible_whichever_runs_have_finished_or_failed(grid, tmp_path, seed):
    rng = np.random.default_rng(seed)
    state = {r.run_id: rng.choice(["complete", "failed", "pending"], p=[0.6, 0.2, 0.2]) for r in grid.runs}
    write_synthetic_tables(grid, tmp_path, 4, status=lambda r: state[r.run_id])
    tables = write_statistics_tables(tmp_path)
    for name in FIGURES:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            data, pages = render(name, tables)
            assert not [p for fig in pages for p in layout_problems(fig)], name
        _drawn_matches_the_summary(data, tables) if pages else None


def test_the_transmix_figure_compares_mixes_with_and_without_a_teacher(tmp_path):
    study = load_study(REPO / "studies" / "transmix_cifar.yaml")
    write_synthetic_tables(study, tmp_path, num_classes=100)
    tables = write_statistics_tables(tmp_path)
    data, pages = render("transmix", tables)
    assert len(pages) == 1 and not layout_problems(pages[0])
    assert set(data["series"]) == {"none", "mixup", "cutmix", "transmix", "mixup_cutmix", "mixup_transmix"}
    assert set(data["hue"]) == {"no teacher", "KD: resnet32x4 · T=4 · kd(ce_weight=0.1,kd_weight=0.9)",
                                "KD: resnet32x4 · T=3 · kd(ce_weight=0.9,kd_weight=0.1)"}
    _drawn_matches_the_summary(data, tables)


def test_the_layout_check_finds_overlapping_text_and_a_legend_over_a_panel():
    fig, (a, b) = plt.subplots(1, 2, figsize=(3, 2))
    a.set_title("a title far too long for its narrow panel")
    b.set_title("another title far too long for its panel")
    b.legend([plt.Line2D([], [])], ["in the panel"], loc="center")
    problems = layout_problems(fig)
    plt.close(fig)
    assert any("texts overlap" in p for p in problems) and any("legend over a panel" in p for p in problems)


def test_figures_are_written_atomically_and_stale_pages_are_removed(tmp_path, monkeypatch):
    fig = plt.figure()
    paths = save([fig, plt.figure()], tmp_path, "thing")
    assert sorted(p.name for p in paths) == ["thing-p1.pdf", "thing-p1.png", "thing-p2.pdf", "thing-p2.png"]
    before = (tmp_path / "thing-p1.png").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save([plt.figure()], tmp_path, "thing")
    assert (tmp_path / "thing-p1.png").read_bytes() == before  # untouched, and no half-written file beside it
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    save([plt.figure()], tmp_path, "thing")  # one page now: the old pages go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing.pdf", "thing.png"]


# ---- the HTML report ---------------------------------------------------------------------------------------

def test_the_html_report_is_offline_and_complete(trained):
    page = (trained / "report.html").read_text()
    tables = read_tables(trained)
    refs = re.findall(r'(?:src|href)="([^"#]+)"', page)
    assert refs and not [r for r in refs if "://" in r or r.startswith("//")]  # nothing fetched from anywhere
    assert all((trained / r).exists() for r in refs), [r for r in refs if not (trained / r).exists()]
    images = [r for r in refs if r.endswith(".png")]
    assert {Path(r).stem.split("-p")[0] for r in images} == set(FIGURES) - {"transmix"}
    board = page[page.index('id=leaderboard class=sortable'):
                 page.index("</table>", page.index("id=leaderboard c"))]
    assert board.count("<tr") - 1 == len(tables.leaderboard) == tables.summary.query(
        "role == 'student' and metric == 'top1_last'")["variant_id"].nunique()
    assert "<script>" in page and "cdn" not in page.lower()


# ---- notebooks ---------------------------------------------------------------------------------------------

@pytest.fixture
def kernel(tmp_path, monkeypatch):
    """A `python3` kernelspec for this interpreter in a private JUPYTER_PATH, so the notebooks run with the
    packages under test whatever kernels the machine has installed."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (mixkd tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "python3"


def _execute(notebooks, km, kernel):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    executed = []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: outputs"
        check = f"%reset -f\nimport sys\nassert sys.executable == {sys.executable!r}"  # the kernel under test
        nb.cells.insert(0, nbformat.v4.new_code_cell(check))
        nbclient.NotebookClient(nb, km=km, timeout=300,
                                resources={"metadata": {"path": str(path.parent)}}).execute()
        executed.append(nb)
    return executed


def test_notebooks_run_on_a_paper_sized_study_and_a_trained_one(paper, trained, kernel, monkeypatch):
    """All notebooks in one kernel (started once: importing torch dominates), each after `%reset -f`; a figure
    is drawn wherever the study has its data."""
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert len(notebooks) == len(FIGURES) + 1
    km = AsyncKernelManager(kernel_name=kernel)
    try:
        for out in (paper, trained):
            monkeypatch.setenv("MIXKD_RESULTS", str(out))
            for path, nb in zip(notebooks, _execute(notebooks, km, kernel)):
                images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                          if "image/png" in o.get("data", {})]
                assert bool(images) == (path.stem[3:] in set(FIGURES) - {"transmix"}), path.name
    finally:
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)


def test_a_notebook_given_a_wrong_results_path_says_so_in_one_line(tmp_path, kernel, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MIXKD_RESULTS", str(tmp_path / "nowhere"))
    with pytest.raises(nbclient.exceptions.CellExecutionError) as e:
        _execute([REPO / "notebooks" / "01_accuracy_by_mix.ipynb"], None, kernel)
    assert (e.value.ename == "MixkdError"
            and "not the output folder of a study (no such folder)" in e.value.evalue)
    assert "KeyError" not in str(e.value) and len(str(e.value.evalue).splitlines()) == 1


# ---- an output folder knows its study ----------------------------------------------------------------------

def test_report_needs_no_study_and_refuses_one_that_is_not_the_folders(trained, tmp_path, capsys):
    before = {f: (trained / f).read_bytes() for f in ("runs.csv", "summary.csv", "leaderboard.csv")}
    assert main(["report", "--out", str(trained)]) == 0
    assert {f: (trained / f).read_bytes() for f in before} == before  # the same study, the same tables
    assert "t → cnn_tiny" in capsys.readouterr().out  # the leaderboard's head
    other = write(tmp_path, tiny_study("other", recipe={**RECIPE, "epochs": 1}))  # no run in common
    assert main(["report", str(other), "--out", str(trained)]) == 2
    err = capsys.readouterr().err
    assert "holds study 'trained' (30 runs), but" in err and "3 of them not there, 30 of its runs" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["run", str(other), "--out", str(trained), "--device", "cpu"]) == 2
    assert "none of them a run of" in capsys.readouterr().err
    assert main(["report", "--out", str(tmp_path / "nothing-here")]) == 2
    assert "holds no study" in capsys.readouterr().err
    assert main(["ls", "--out", str(trained)]) == 0 and "t_mix→cnn_tiny" in capsys.readouterr().out


def test_compare_sets_aside_exactly_the_timing_execution_and_provenance_columns(trained, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    runs = pd.read_parquet(trained / "runs.parquet")
    for name in ("epochs.parquet", "metrics.parquet"):
        (copy / name).write_bytes((trained / name).read_bytes())
    aside = columns.of_kind(runs, "timing", "execution", "provenance")
    assert {"wall_seconds", "lockstep_size", "hostname", "engine_precision"} <= set(aside)
    runs.assign(**{c: "changed" for c in aside}).to_parquet(copy / "runs.parquet")
    assert first_difference(trained, copy) is None
    runs.assign(top1_best=runs["top1_best"] + 1e-9).to_parquet(copy / "runs.parquet")
    assert "top1_best" in first_difference(trained, copy)


def test_reliability_legend_has_one_entry_per_line_style():
    """A plain teacher and a scratch run without mixing are both drawn black and solid: one entry, both names."""
    from mixkd.report.figures.calibration import _swatches

    rows = pd.DataFrame({"series": ["plain", "Mix-T (mixup)", "none", "mixup", "mixup · teacher"],
                         "color": ["#000000", "#E69F00", "#000000", "#E69F00", "#E69F00"],
                         "linestyle": ["-", "-", "-", "-", "--"]})
    assert _swatches(rows) == {"plain / none": ("#000000", "-"), "Mix-T (mixup) / mixup": ("#E69F00", "-"),
                               "mixup · teacher": ("#E69F00", "--")}
