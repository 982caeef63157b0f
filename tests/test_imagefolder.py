"""`imagefolder` with `decode: device` against torchvision's PIL pipeline, on the CPU: same pixels but for
rounding, torchvision's crop distribution, seeded batches through workers, and a study trained end to end."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T

from mixkd.data import create_dataset
from mixkd.data.imagefolder import IMAGENET_STD, RATIO, SCALE, _Encoded, _resample, eval_resize
from mixkd.errors import ConfigError, MixkdError
from mixkd.study import parse_study
from tiny import RECIPE, image_folder, run, tiny_study, write

# torchvision 0.29 deprecates its image decoders for TorchCodec's (same API), not a dependency of mixkd yet
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

# How far the two pipelines' pixels may be apart, in 0-255 levels. On the CPU both decode with libjpeg-turbo
# (identical pixels) and both round and clip to whole levels after each resampling pass; only PIL's fixed-point
# coefficients (22 bits) differ from the device path's float32 ones, which flips a level where a pass's exact
# value lies within a hair of a half: 1 level, at 0.04-2.4% of noise pixels (measured), none more. A
# geometric slip (half a pixel, a swapped axis, the wrong filter) moves noise pixels by tens of levels.
TOLERANCE = 1.05
# (training crops' filter, evaluation's, evaluation's crop share)
FILTERS = [(None, None, None), ("bicubic", "bicubic", None), ("random", "bicubic", 0.9)]


def noise_folder(root):
    """train/ and val/ of random-noise files of several shapes, two classes: RGB, grayscale and CMYK JPEGs
    and a PNG (decoded on the CPU by the device path), smaller and larger than the 16-pixel crops."""
    rng = np.random.default_rng(0)
    files = [((20, 24), "RGB", "jpg"), ((31, 17), "L", "jpg"), ((48, 64), "CMYK", "jpg"),
             ((12, 10), "RGB", "png"), ((64, 40), "RGB", "jpg")]
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i, ((h, w), mode, suffix) in enumerate(files):
                image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
                image.save(root / split / cls / f"{i}.{suffix}")
    return root


def levels(normalised: torch.Tensor) -> torch.Tensor:
    """A difference of normalised images in 0-255 pixel levels."""
    return normalised.abs() * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


@pytest.mark.parametrize("interpolation, eval_interpolation, eval_crop", FILTERS)
def test_device_decode_matches_the_pil_pipeline(tmp_path, interpolation, eval_interpolation, eval_crop):
    """With each filter, over several draws of crops: bilinear to a level everywhere; bicubic overshoots, PIL
    clips after each pass and picks which pass goes first itself, so where its order is the other one, edge
    pixels differ (measured: ≤ 0.16% of noise pixels, by ≤ 6 levels; `random` draws its filter per crop
    between the crop's box and its flip, on both paths, or far more would)."""
    root = noise_folder(tmp_path)
    pil, device = (create_dataset("imagefolder", root, img_size=16, num_workers=0, decode=d,
                                  interpolation=interpolation, eval_interpolation=eval_interpolation,
                                  eval_crop=eval_crop)
                   for d in ("pil", "device"))
    (a, ya), = pil.eval_loader(64, "cpu")
    (b, yb), = device.eval_loader(64, "cpu")
    assert b.shape == (10, 3, 16, 16) and torch.equal(ya, yb)
    differences = [levels(a - b)]
    for seed in range(4):  # no workers: both draw from torch's global generator, in the same order
        torch.manual_seed(seed)
        (a, ya, ia), = pil.train_loader(64, "cpu", seed=0)
        torch.manual_seed(seed)
        (b, yb, ib), = device.train_loader(64, "cpu", seed=0)
        assert torch.equal(ia, ib) and torch.equal(yb, device.train_targets[ib])
        differences.append(levels(a - b))
    off = torch.cat([d.flatten() for d in differences])
    if interpolation is None:
        assert off.max() <= TOLERANCE
    else:
        assert (off > TOLERANCE).float().mean() < 0.005 and off.max() <= 25


def test_one_bicubic_pass_is_pils_to_a_level():
    """Where PIL resamples along one axis only, no order is left to differ: the cubic weights are PIL's."""
    image = torch.tensor(np.random.default_rng(1).integers(0, 256, (3, 20, 41)), dtype=torch.uint8)
    theirs = torch.tensor(np.asarray(Image.fromarray(image.permute(1, 2, 0).numpy()).resize((16, 20),
                                                                                            Image.BICUBIC)))
    rows, cols = torch.tensor([[0, 20, 20, 0]]), torch.tensor([[0, 41, 16, 0]])
    ours = _resample([image], rows, cols, torch.tensor([False]), torch.tensor([True]), 16)  # rows 0-15 kept
    assert (ours[0].permute(1, 2, 0) - theirs[:16]).abs().max() <= 1


def test_device_crops_follow_random_resized_crop(tmp_path):
    """Boxes drawn for a wide image (so that RandomResizedCrop's rejections and fall-backs shape them, and
    boxes drawn for the transposed size would not fit) against torchvision's get_params for its size. The
    two-sample KS tests are seeded, so not flaky: their p-values here are 0.035-0.59, and a crop scale of
    (0.25, 1) instead of (0.08, 1) is told apart at p < 1e-6."""
    height, width, n = 48, 160, 2000
    Image.new("RGB", (width, height)).save(tmp_path / "wide.jpg")
    encoded = _Encoded([(str(tmp_path / "wide.jpg"), 0)] * n, 16, augment=True)
    torch.manual_seed(0)
    items = [encoded[k] for k in range(n)]
    rows, cols = torch.stack([it[2] for it in items]).numpy(), torch.stack([it[3] for it in items]).numpy()
    assert (rows[:, 2:] == [16, 0]).all() and (cols[:, 2:] == [16, 0]).all()  # resized to 16, all kept
    assert (rows[:, 0] >= 0).all() and (rows[:, 0] + rows[:, 1] <= height).all()
    assert (cols[:, 0] >= 0).all() and (cols[:, 0] + cols[:, 1] <= width).all()
    torch.manual_seed(1)
    image = torch.empty(3, height, width)
    ref = np.array([T.RandomResizedCrop.get_params(image, SCALE, RATIO) for _ in range(n)])  # top left h w
    narrow = np.array([T.RandomResizedCrop.get_params(image, (0.25, 1.0), RATIO) for _ in range(n)])

    def area(h, w):
        return h * w / (height * width)

    ours, theirs = area(rows[:, 1], cols[:, 1]), area(ref[:, 2], ref[:, 3])
    assert stats.ks_2samp(ours, theirs).pvalue > 0.01
    assert stats.ks_2samp(np.log(cols[:, 1] / rows[:, 1]), np.log(ref[:, 3] / ref[:, 2])).pvalue > 0.01
    assert stats.ks_2samp(rows[:, 0], ref[:, 0]).pvalue > 0.01  # top
    assert stats.ks_2samp(cols[:, 0], ref[:, 1]).pvalue > 0.01  # left
    assert stats.ks_2samp(theirs, area(narrow[:, 2], narrow[:, 3])).pvalue < 1e-6  # it sees a wrong scale
    assert stats.binomtest(sum(it[4] for it in items), n).pvalue > 0.01  # flips: half


def test_each_filter_is_the_one_used_and_random_draws_either_half_the_time(tmp_path):
    root = noise_folder(tmp_path)
    (bilinear, _), = create_dataset("imagefolder", root, img_size=16, num_workers=0).eval_loader(64, "cpu")
    bicubic = create_dataset("imagefolder", root, img_size=16, num_workers=0, eval_interpolation="bicubic")
    (cubic, _), = bicubic.eval_loader(64, "cpu")
    assert levels(bilinear - cubic).max() > 10 * TOLERANCE
    encoded = _Encoded([(str(next((root / "train" / "a").glob("0.jpg"))), 0)] * 1000, 16, True, "random")
    torch.manual_seed(0)
    assert stats.binomtest(sum(encoded[k][5] for k in range(1000)), 1000).pvalue > 0.01


def test_filters_and_crop_set_are_part_of_run_ids_and_unset_leave_them_as_they_were(tmp_path):
    dataset = {"name": "imagefolder", "img_size": 16}
    ids = {name: {r.run_id for r in parse_study(tiny_study("f", dataset={**dataset, **extra})).runs}
           for name, extra in [("unset", {}), ("random", {"interpolation": "random"}),
                               ("bicubic", {"eval_interpolation": "bicubic"}), ("crop", {"eval_crop": 0.9})]}
    assert all(not ids["unset"] & ids[name] for name in ("random", "bicubic", "crop"))
    with pytest.raises(ConfigError, match=r"dataset.interpolation: 'bicubik' is not allowed; allowed: bilinear"):
        parse_study(tiny_study("f", dataset={**dataset, "interpolation": "bicubik"}))
    assert (eval_resize(224, None), eval_resize(224, 0.9), eval_resize(32, 0.875)) == (256, 248, 36)  # timm's
    with pytest.raises(ConfigError, match=r"^dataset.eval_crop: must be in \(0, 1\], got 1.2$"):
        parse_study(tiny_study("f", dataset={**dataset, "eval_crop": 1.2}))  # when read, before any data
    with pytest.raises(MixkdError, match=r"^imagefolder: eval_crop must be in \(0, 1\]"):
        create_dataset("imagefolder", noise_folder(tmp_path), eval_crop=1.2)
    # the decoder joins the ids of bicubic runs only, where the two paths may differ by more than a level
    for extra, apart in [({}, False), ({"interpolation": "bicubic"}, True), ({"eval_interpolation": "bicubic"}, True)]:
        pil, device = ({r.run_id for r in parse_study(tiny_study("f", dataset={**dataset, **extra,
                                                                                "decode": d})).runs}
                       for d in ("pil", "device"))
        assert bool(pil & device) != apart


def test_device_decode_batches_follow_the_seed_through_workers(tmp_path):
    root = image_folder(tmp_path, per_class=8, size=24, suffix="jpg")
    ds = create_dataset("imagefolder", root, img_size=16, num_workers=2, decode="device")

    def epoch(seed):
        return [torch.cat(column) for column in zip(*ds.train_loader(8, "cpu", seed))]

    (x, y, index), again, other = epoch(0), epoch(0), epoch(1)
    assert x.shape == (24, 3, 16, 16) and sorted(index.tolist()) == list(range(24))
    assert all(torch.equal(a, b) for a, b in zip((x, y, index), again))
    assert not torch.equal(index, other[2]) and not torch.equal(x, other[0])


def test_a_device_decoded_study_trains_end_to_end_under_the_pil_run_ids(tmp_path):
    root = image_folder(tmp_path / "images", per_class=8, size=24, suffix="jpg")
    dataset = {"name": "imagefolder", "img_size": 16, "num_workers": 0}
    study = tiny_study("jpeg", dataset={**dataset, "decode": "device"}, recipe={**RECIPE, "epochs": 1},
                       grid={"mix": ["mixup"], "seeds": [0]})
    # how the images are decoded is not what is trained on: the run ids are the PIL decoder's
    ids = [r.run_id for r in parse_study(study).runs]
    assert ids == [r.run_id for r in parse_study({**study, "dataset": dataset}).runs]
    out = tmp_path / "out"
    assert run(write(tmp_path, study), out, "--data-root", str(root)) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["run_id"]) == sorted(ids)
    assert (runs["status"] == "complete").all() and (runs["images_per_s"] > 0).all()


@pytest.mark.parametrize("decode", ["pil", "device"])
def test_randaugment_and_erasing_follow_the_seed_on_both_paths_and_train(tmp_path, decode):
    """PIL: timm's own transforms in the workers (seeded by the loader); device: mixkd's batched ops, from a
    generator the loader seeds each epoch."""
    root = image_folder(tmp_path / "images", per_class=8, size=24, suffix="jpg")
    ds = create_dataset("imagefolder", root, img_size=16, num_workers=1, decode=decode)

    def epoch(seed, **augment):
        return [torch.cat(column) for column in zip(*ds.train_loader(8, "cpu", seed, **augment))]

    policy = {"augment": "rand-m9-mstd0.5-inc1", "random_erasing": 0.5}
    plain, (x, y, index), again = epoch(0), epoch(0, **policy), epoch(0, **policy)
    assert torch.equal(index, plain[2]) and not torch.equal(x, plain[0])  # same order and crops, augmented
    assert all(torch.equal(a, b) for a, b in zip((x, y, index), again))
    study = tiny_study("augmented_folder", dataset={"name": "imagefolder", "img_size": 16, "num_workers": 1,
                                                    "decode": decode},
                       recipe={**RECIPE, "epochs": 1, **policy}, grid={"mix": ["none"], "seeds": [0]},
                       baselines=False)
    assert run(write(tmp_path, study), tmp_path / "out", "--data-root", str(root)) == 0


def test_bench_loader_times_the_image_folder_without_cifar():
    from mixkd.bench.loader import bench_loader, format_loader_bench

    rows = bench_loader(None, batches=10, batch_size=8, images=24)
    assert [(r["data"], r["batches"]) for r in rows] == [("imagefolder", 1)] * 2
    assert all(r["images_per_s"] > 0 for r in rows) and len(format_loader_bench(rows).splitlines()) == 3
