"""The tiny study the runner, executor, engine, resilience and analysis tests train (synthetic 8×8 images, a
cnn_small teacher, a cnn_tiny student: seconds on a CPU), and the two steps every such test takes with it."""

import numpy as np
import yaml
from PIL import Image

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


def image_folder(root, classes=("ant", "bee", "cat"), per_class: int = 20, size: int = 32):
    """An ImageNet-style tree of random PNGs: root/{train,val}/<class>/<i>.png, `per_class` in each."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(image).save(root / split / cls / f"{i}.png")
    return root
