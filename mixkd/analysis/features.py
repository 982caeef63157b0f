"""The penultimate feature space: how tightly classes cluster (scatter ratio) and a 2-D t-SNE map to look at."""

from __future__ import annotations

from torch import Tensor

from .base import ANALYSES, RunOutputs, row, writes


def scatter_ratio(features: Tensor, labels: Tensor) -> float:
    """trace(S_w) / trace(S_b): within-class over between-class scatter; smaller = tighter, better-separated classes."""
    f = features.double()
    within = between = 0.0
    centre = f.mean(dim=0)
    for c in labels.unique():
        members = f[labels == c]
        mu = members.mean(dim=0)
        within += (members - mu).pow(2).sum().item()
        between += len(members) * (mu - centre).pow(2).sum().item()
    return within / between


@ANALYSES.register()
@writes(scatter_ratio="within- over between-class scatter of the penultimate features")
def feature_scatter(run: RunOutputs) -> list[dict]:
    return [row("scatter_ratio", scatter_ratio(run.features, run.labels))]


@ANALYSES.register()
@writes(tsne="2-D t-SNE of the penultimate features (x, y; class; value: the sample's index)")
def tsne(run: RunOutputs, samples: int = 200, seeds: tuple = (0,), max_iter: int = 500) -> list[dict]:
    """2-D t-SNE of the first `samples` evaluation samples' features: rows (x, y, class = true label, value =
    sample index). t-SNE dominates the analysis cost (~1 s for 360 points on a busy CPU core), so it is
    computed for teachers and for runs whose seed is in `seeds` only, on ≤ 200 points, single-threaded
    (threads only contend on small inputs), PCA-initialised and with a fixed random_state: deterministic."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    if not run.config.is_teacher and run.config.seed not in seeds:
        return []
    n = min(samples, len(run.labels))
    features = run.features[:n].double().numpy()
    with threadpool_limits(1):
        xy = TSNE(2, perplexity=min(30.0, (n - 1) / 3), init="pca", max_iter=max_iter,
                  random_state=0).fit_transform(features)
    labels = run.labels[:n].tolist()
    return [row("tsne", i, x=float(x), y=float(y), **{"class": c}) for i, ((x, y), c) in enumerate(zip(xy, labels))]
