"""The tiny study the runner, executor, engine, resilience and analysis tests train (synthetic 8×8 images, a
cnn_small teacher, a cnn_tiny student: seconds on a CPU), and the two steps every such test takes with it."""

import yaml

from mixkd.cli import main

RECIPE = {"epochs": 2, "batch_size": 32, "schedule": "cosine", "eval_batch_size": 64}


def tiny_study(name: str, **overrides) -> dict:
    """The tiny study with any top-level key replaced."""
    return {"name": name, "dataset": {"name": "synthetic", "train_size": 96, "test_size": 32}, "recipe": dict(RECIPE),
            "teachers": {"t": {"model": "cnn_small"}}, "students": ["cnn_tiny"], **overrides}


def write(tmp_path, study: dict, name: str = "study.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(study))
    return path


def run(path, out, *extra) -> int:
    """`mixkd run` on the CPU; its exit status."""
    return main(["run", str(path), "--out", str(out), "--device", "cpu", *extra])
