"""Analyses: metrics on hand-made logits with known answers, attacks against their analytic result, paired
statistics against scipy, and every figure and notebook on a tiny finished study's tables."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

from mixkd.analysis import ANALYSES, COLUMNS, RunOutputs, analyse_run
from mixkd.analysis.distillation import agreement, kl_divergence, pearson
from mixkd.analysis.features import scatter_ratio
from mixkd.analysis.robustness import fgsm, pgd
from mixkd.analysis.stats import comparisons_table, paired_test, summary_table, write_statistics
from mixkd.data import InMemoryDataset
from mixkd.metrics import METRICS, reliability_bins, softmax_entropy
from mixkd.plots import PLOTS, make_plots, save
from mixkd.tables import Tables, read_tables
from tiny import RECIPE, run, tiny_study, write

REPO = Path(__file__).resolve().parents[1]
K = 4


def metric(name, logits, labels):
    return METRICS.get(name)(torch.as_tensor(logits, dtype=torch.float32), torch.as_tensor(labels))


# ---- metrics on hand-made logits ---------------------------------------------------------------------------

def test_entropy_is_zero_for_one_hot_and_log_k_for_uniform_outputs_at_any_temperature():
    one_hot = torch.tensor([[100.0, 0, 0, 0], [0, 0, 100.0, 0]])
    uniform = torch.zeros(3, K)
    assert softmax_entropy(one_hot).max().item() == pytest.approx(0, abs=1e-12)
    for t in (1, 4):
        assert softmax_entropy(uniform, t).tolist() == pytest.approx([math.log(K)] * 3)
    assert metric("entropy", uniform, [0, 1, 2]) == pytest.approx(math.log(K))


def test_brier_and_nll_are_zero_for_a_perfect_prediction_and_known_for_a_uniform_one():
    labels = [0, 2, 3]
    perfect = 100 * torch.nn.functional.one_hot(torch.tensor(labels), K).float()
    assert metric("brier", perfect, labels) == pytest.approx(0, abs=1e-12)
    assert metric("nll", perfect, labels) == pytest.approx(0, abs=1e-6)
    assert metric("brier", torch.zeros(3, K), labels) == pytest.approx(1 - 1 / K)  # (1 - 1/K)² + (K-1)/K²
    assert metric("top1", perfect, labels) == 1.0 and metric("top5", torch.zeros(3, K), labels) == 1.0


def test_ece_is_zero_on_a_perfectly_calibrated_set_and_the_gap_otherwise():
    p = 0.75  # every sample predicts class 0 with confidence 0.75 ...
    logits = torch.tensor([[math.log(p / (1 - p)), 0.0]]).repeat(8, 1)
    calibrated = [0, 0, 0, 1, 0, 0, 0, 1]  # ... and 3 in 4 are class 0
    assert metric("ece", logits, calibrated) == pytest.approx(0, abs=1e-6)  # float32 logits
    assert metric("ece", logits, [0] * 8) == pytest.approx(0.25)
    count, conf, acc = reliability_bins(logits, torch.tensor(calibrated))
    b = math.ceil(0.75 * 15) - 1  # the (lo, hi] bin holding 0.75
    assert count.sum() == 8 and count[b] == 8 and conf[b].item() == pytest.approx(p) and acc[b].item() == 0.75


def test_identical_teacher_and_student_agree_fully_with_zero_kl_and_unit_correlation():
    z = torch.randn(50, 10, generator=torch.Generator().manual_seed(0))
    assert agreement(z, z) == 1.0
    assert kl_divergence(z, z, 4.0) == pytest.approx(0, abs=1e-12)
    assert pearson(z, z).item() == pytest.approx(1) and pearson(z, 2 * z + 1, dim=1).mean().item() == pytest.approx(1)
    assert pearson(z, -z).item() == pytest.approx(-1)
    assert agreement(z, -z) == 0.0 and kl_divergence(z, -z) > 0


def test_scatter_ratio_on_hand_made_features():
    # class 0 at (0,0),(2,0): mean (1,0); class 1 at (0,4),(2,4): mean (1,4); centre (1,2).
    f = torch.tensor([[0.0, 0], [2, 0], [0, 4], [2, 4]])
    # S_w: each point is 1 from its class mean → 4; S_b: 2·|(0,-2)|² + 2·|(0,2)|² = 16
    assert scatter_ratio(f, torch.tensor([0, 0, 1, 1])) == pytest.approx(4 / 16)


# ---- attacks ------------------------------------------------------------------------------------------------

class Staged(nn.Module):
    """The model contract the analyses read: model(x, return_features=True) → (logits, Features)."""

    def __init__(self, features: int, classes: int, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(features, classes, bias=bias)

    def forward(self, x, return_features=False):
        from mixkd.models.base import Features

        pooled = x.flatten(1)
        return (self.fc(pooled), Features([pooled], pooled)) if return_features else self.fc(pooled)


def linear_model(w: torch.Tensor) -> nn.Module:
    model = Staged(w.shape[1], w.shape[0], bias=False)
    model.fc.weight.data = w.clone()
    return model.eval()


def test_fgsm_on_a_linear_model_steps_along_the_sign_of_the_weight_difference():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(2, 6, generator=g)
    x, y = torch.randn(5, 1, 2, 3, generator=g), torch.tensor([0, 1, 1, 0, 1])
    eps, lo, hi = torch.tensor(0.1), torch.tensor(-10.0), torch.tensor(10.0)
    # CE gradient of a linear model: Σ_k p_k w_k − w_y = p_other · (w_other − w_y), of sign sign(w_other − w_y)
    direction = torch.stack([(w[1 - c] - w[c]).sign() for c in y.tolist()]).view_as(x)
    adv = fgsm(linear_model(w), x, y, eps, lo, hi)
    assert torch.equal(adv, x + eps * direction)
    # so the margin z_y − z_other shrinks by exactly ε·‖w_other − w_y‖₁
    margin = lambda inp: (inp.flatten(1) @ (w[y] - w[1 - y]).T).diagonal()  # noqa: E731
    assert torch.allclose(margin(x) - margin(adv), eps * (w[0] - w[1]).abs().sum(), atol=1e-5)
    clamped = fgsm(linear_model(w), x, y, eps, x.min() - 0.01, x.max() + 0.01)  # the valid range still holds
    assert clamped.min() >= x.min() - 0.01 and clamped.max() <= x.max() + 0.01


def test_pgd_with_one_step_of_size_epsilon_is_fgsm():
    from mixkd.models import create_model

    torch.manual_seed(0)
    model = create_model("cnn_tiny", num_classes=4, in_chans=3).eval()
    x, y = torch.randn(8, 3, 8, 8).clamp(-2, 2), torch.randint(0, 4, (8,))  # a valid image: inside [lo, hi]
    eps, lo, hi = torch.full((1, 3, 1, 1), 0.05), torch.tensor(-2.0), torch.tensor(2.0)
    assert torch.equal(pgd(model, x, y, eps, lo, hi, steps=1, step=eps), fgsm(model, x, y, eps, lo, hi))
    adv = pgd(model, x, y, eps, lo, hi)  # 10 steps of ε/4 never leave the ε-ball
    assert (adv - x).abs().max() <= 0.05 + 1e-6


def test_robustness_rows_match_the_analytic_accuracy_of_a_linear_model_in_pixel_space():
    """Normalisation mean 0.5, std 0.25: ε in pixels is 4ε after normalisation; pixels stay in 100..150, so
    nothing clamps and both attacks reach x + 4ε·sign(w_other − w_y) (the sign never changes on a linear model)."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(2, 4, generator=g)
    images = torch.randint(100, 151, (64, 1, 2, 2), generator=g, dtype=torch.uint8)
    x = (images.float() / 255 - 0.5) / 0.25
    labels = (x.flatten(1) @ w.T).argmax(dim=1)
    labels[:8] = 1 - labels[:8]  # some wrong from the start
    data = InMemoryDataset("toy", images, labels, images, labels, num_classes=2, mean=(0.5,), std=(0.25,))
    config = {"role": "teacher", "seed": 0, "recipe": None, "distill": None}
    model = linear_model(w)
    rows = pd.DataFrame(analyse_run(config, model, None, data, torch.device("cpu"),
                                    options={"robustness": {"samples": 50}, "tsne": {"samples": 20}}))
    margin = (x.flatten(1) @ (w[labels] - w[1 - labels]).T).diagonal()[:50]
    robust = rows[rows["metric"] == "robust_top1"]
    assert set(robust["attack"]) == {"fgsm", "pgd10"}
    for _, r in robust.iterrows():
        expected = (margin > 4 * r["epsilon"] * (w[0] - w[1]).abs().sum()).double().mean().item()
        assert r["value"] == pytest.approx(expected), (r["attack"], r["epsilon"])
    assert robust.groupby("epsilon")["value"].nunique().max() == 1  # FGSM = PGD here


# ---- rows ---------------------------------------------------------------------------------------------------

def test_rows_are_tidy_with_every_qualifier_and_teacher_rows_only_for_students():
    torch.manual_seed(0)
    images, labels = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8), torch.arange(40) % K
    data = InMemoryDataset("toy", images, labels, images, labels, num_classes=K, mean=(0.5,), std=(0.25,))
    model = Staged(16, K)
    config = {"role": "student", "seed": 1, "recipe": {"eval_batch_size": 16},
              "distill": {"temperature": 2.0, "teacher": "t"}}
    rows = pd.DataFrame(analyse_run(config, model, model, data, torch.device("cpu")))  # its own teacher
    assert list(rows.columns) == list(COLUMNS)
    assert set(rows.loc[rows["metric"] == "entropy_mean", "temperature"]) == {1.0, 2.0}  # T=1 and the run's T
    assert rows.loc[rows["metric"] == "agreement", "value"].item() == 1.0
    assert rows.loc[rows["metric"] == "kl_teacher_student", "temperature"].item() == 2.0
    assert rows.loc[rows["metric"] == "entropy_hist", "value"].sum() == pytest.approx(1)
    assert rows.loc[rows["metric"] == "reliability_count", "value"].sum() == 40
    assert sorted(rows.loc[rows["metric"] == "class_entropy", "class"]) == list(range(K))
    assert not (rows["metric"] == "tsne").any()  # seed 1: t-SNE only for teachers and seed 0
    teacher = pd.DataFrame(analyse_run({**config, "role": "teacher", "distill": None}, model, None, data, "cpu"))
    assert set(teacher.loc[teacher["metric"] == "entropy_mean", "temperature"]) == {1.0, 4.0}
    assert not teacher["metric"].isin(["agreement", "kl_teacher_student"]).any()
    tsne = teacher[teacher["metric"] == "tsne"]
    assert len(tsne) == 40 and tsne[["x", "y", "class"]].notna().all().all()
    assert set(ANALYSES.names()) >= {"scores", "reliability", "smoothness", "teacher_student", "feature_scatter",
                                      "tsne", "robustness"}


# ---- statistics ---------------------------------------------------------------------------------------------

def hand_made_runs() -> pd.DataFrame:
    """One teacher, one student; mix none (view none) and mixup (views student, both) at T = 1 and 4; 3 seeds."""
    acc = {("none", "none", 4): [0.70, 0.72, 0.71], ("mixup", "student", 4): [0.74, 0.73, 0.76],
           ("mixup", "both", 4): [0.75, 0.78, 0.74], ("none", "none", 1): [0.69, 0.70, 0.70],
           ("mixup", "student", 1): [0.71, 0.73, 0.72], ("mixup", "both", 1): [0.70, 0.71, 0.73]}
    rows = [{"run_id": f"{mix}-{view}-{t}-{seed}", "study": "s", "role": "student", "name": "r8", "model": "resnet8",
             "teacher": "r56", "student": "r8", "teacher_id": "abc", "mix": mix,
             "mix_alpha": 1.0 if mix == "mixup" else None, "temperature": float(t), "mixed_view": view, "loss": "kd",
             "seed": seed, "status": "complete", "top1_last": a, "top1_best": a + 0.01, "train_seconds": 1.0 + seed}
            for (mix, view, t), accs in acc.items() for seed, a in enumerate(accs)]
    return pd.DataFrame(rows)


def test_paired_comparisons_reproduce_scipy_on_a_hand_made_table():
    runs = hand_made_runs()
    c = comparisons_table(runs)
    c = c[c["metric"] == "top1_last"]
    assert len(c) == 4 + 3 + 2  # mix: 2 views × 2 T; temperature: 3 variants; view: 2 T
    row = c[(c["axis"] == "mix") & (c["b"] == "mixup") & (c["mixed_view"] == "both") & (c["temperature"] == 4)]
    a, b = np.array([0.70, 0.72, 0.71]), np.array([0.75, 0.78, 0.74])
    t, w = stats.ttest_rel(b, a), stats.wilcoxon(b - a)
    half = stats.t.ppf(0.975, 2) * (b - a).std(ddof=1) / np.sqrt(3)
    r = row.iloc[0]
    assert (r["a"], r["n"], r["role"], r["teacher"]) == ("none", 3, "student", "r56") and pd.isna(r["mix"])
    assert r["mean_diff"] == pytest.approx((b - a).mean())
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(((b - a).mean() - half, (b - a).mean() + half))
    assert (r["t_stat"], r["t_pvalue"], r["wilcoxon_pvalue"]) == pytest.approx((t.statistic, t.pvalue, w.pvalue))
    assert r["significant"] == (t.pvalue < 0.05)
    temp = c[(c["axis"] == "temperature") & (c["mix"] == "none")].iloc[0]
    assert (temp["a"], temp["b"]) == ("1", "4")
    assert temp["t_pvalue"] == pytest.approx(stats.ttest_rel([0.70, 0.72, 0.71], [0.69, 0.70, 0.70]).pvalue)
    view = c[(c["axis"] == "mixed_view") & (c["temperature"] == 1)].iloc[0]
    assert (view["a"], view["b"], view["mix"]) == ("student", "both", "mixup")


def test_degenerate_pairs_give_nan_not_errors():
    assert math.isnan(paired_test([1.0], [2.0])["t_pvalue"])
    same = paired_test([0.5, 0.6, 0.7], [0.5, 0.6, 0.7])
    assert same["mean_diff"] == 0 and math.isnan(same["wilcoxon_pvalue"]) and not same["significant"]
    shifted = paired_test([0.5, 0.6], [0.6, 0.7])  # equal differences: no variance, t undefined
    assert shifted["mean_diff"] == pytest.approx(0.1) and math.isnan(shifted["t_stat"]) and not shifted["significant"]


def test_summary_gives_mean_std_and_t_interval_per_configuration(tmp_path):
    runs = hand_made_runs()
    metrics = pd.DataFrame({"run_id": runs["run_id"], "metric": "ece", "value": runs["seed"] / 10,
                            "temperature": np.nan, "bin": np.nan})
    s = summary_table(runs, metrics)
    assert "seed" not in s.columns and "train_seconds" not in s.columns  # not identity: varies within a config
    top = s[(s["metric"] == "top1_last") & (s["mix"] == "mixup") & (s["mixed_view"] == "both")
            & (s["temperature"] == 4)]
    v = np.array([0.75, 0.78, 0.74])
    half = stats.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    assert top[["n", "mean", "std"]].iloc[0].tolist() == pytest.approx([3, v.mean(), v.std(ddof=1)])
    assert top[["ci_low", "ci_high"]].iloc[0].tolist() == pytest.approx([v.mean() - half, v.mean() + half])
    assert len(s) == 6 * 3  # 6 configurations × (top1_last, top1_best, ece)
    first = write_statistics(runs, metrics, tmp_path)
    files = {f: (tmp_path / f).read_bytes() for f in ("summary.csv", "comparisons.csv")}
    write_statistics(runs.sample(frac=1, random_state=0), metrics, tmp_path)  # row order must not matter
    assert {f: (tmp_path / f).read_bytes() for f in files} == files
    assert len(first[1]) > 0


# ---- figures and notebooks on a tiny finished study ---------------------------------------------------------

TINY = tiny_study("tiny_analysis", recipe={**RECIPE, "lr": 0.05},
                  teachers={"t": {"model": "cnn_small"}, "t_mix": {"model": "cnn_small", "mix": "mixup"}},
                  grid={"mix": ["none", "mixup"], "temperature": [1, 4], "mixed_view": ["student", "both"],
                        "seeds": [0, 1]})


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The tiny study trained and reported once (each run on one torch thread, the engine's default)."""
    tmp = tmp_path_factory.mktemp("tiny_analysis")
    assert run(write(tmp, TINY), tmp / "out") == 0
    return tmp / "out"


def test_report_writes_statistics_and_every_figure(study):
    tables = read_tables(study)
    assert set(tables.metrics.columns) == {"run_id", *COLUMNS}
    assert tables.metrics["run_id"].nunique() == len(tables.runs) == 30
    assert {"top1_last", "ece", "entropy_mean", "robust_top1", "agreement"} <= set(tables.summary["metric"])
    assert set(tables.comparisons["axis"]) == {"mix", "temperature", "mixed_view"}
    for name in PLOTS:
        for suffix in ("png", "pdf"):
            assert (study / "figures" / f"{name}.{suffix}").stat().st_size > 0, name


def test_every_plot_draws_from_the_tables_and_skips_when_its_data_is_absent(study, tmp_path):
    tables = read_tables(study)
    for name, draw in PLOTS.items():
        assert draw(tables) is not None, name
    empty = read_tables(tmp_path)  # no tables at all
    assert all(draw(empty) is None for draw in PLOTS.values())
    assert make_plots(empty, tmp_path) == []
    teachers = tables.runs[tables.runs["role"] == "teacher"]["run_id"]
    only_teachers = Tables(tables.runs[tables.runs["run_id"].isin(teachers)],
                           tables.metrics[tables.metrics["run_id"].isin(teachers)],
                           tables.summary[tables.summary["role"] == "teacher"], tables.comparisons.iloc[:0])
    drawn = {name for name, draw in PLOTS.items() if draw(only_teachers) is not None}
    assert drawn == {"teacher_entropy", "reliability", "tsne", "robustness"}


def test_a_redrawn_figure_is_byte_identical_to_the_reported_one(study, tmp_path):
    paths = save(PLOTS["teacher_entropy"](read_tables(study)), tmp_path / "teacher_entropy")
    assert [p.read_bytes() for p in paths] == [(study / "figures" / p.name).read_bytes() for p in paths]


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


def test_notebooks_execute_on_the_tables_of_a_finished_study(study, kernel, monkeypatch):
    """All notebooks in one kernel (started once: importing torch dominates), each after `%reset -f`."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_core.utils import run_sync

    monkeypatch.setenv("MIXKD_RESULTS", str(study))
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    assert len(notebooks) >= 6
    km = AsyncKernelManager(kernel_name=kernel)
    try:
        for path in notebooks:
            nb = nbformat.read(path, as_version=4)
            assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{path.name}: outputs"
            check = f"%reset -f\nimport sys\nassert sys.executable == {sys.executable!r}"  # the kernel under test
            nb.cells.insert(0, nbformat.v4.new_code_cell(check))
            nbclient.NotebookClient(nb, km=km, timeout=120,
                                    resources={"metadata": {"path": str(path.parent)}}).execute()
            images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if "image/png" in o.get("data", {})]
            assert images, f"{path.name} drew no figure"
    finally:
        if km.has_kernel:
            run_sync(km.shutdown_kernel)(now=True)
