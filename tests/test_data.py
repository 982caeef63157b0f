"""Datasets, the validation split and the device-resident loader (checked against torchvision)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision import transforms as T

from mixkd.data import DeviceLoader, InMemoryDataset, create_dataset
from mixkd.data.loader import epoch_order
from mixkd.data.cifar import CIFAR10_FILES, CIFAR100_FILES, CIFAR100_MEAN, CIFAR100_STD
from mixkd.data.split import hold_out_val, stratified_holdout
from mixkd.errors import MixkdError

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
RAW = dict(mean=(0.0,) * 3, std=(1 / 255,) * 3)  # normalisation that leaves the pixel values as they are


def coordinate_images(n: int) -> torch.Tensor:
    """(n, 3, 32, 32): channel 0 holds row + 1, channel 1 column + 1 (0 is padding), channel 2 the image id."""
    x = torch.empty(n, 3, 32, 32, dtype=torch.uint8)
    x[:, 0] = torch.arange(1, 33, dtype=torch.uint8)[:, None]
    x[:, 1] = torch.arange(1, 33, dtype=torch.uint8)[None, :]
    x[:, 2] = (torch.arange(n) % 256).to(torch.uint8)[:, None, None]
    return x


def crop_params(crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offset (dy, dx) in the 4-padded image and mirroring of crops of coordinate images, read at the centre."""
    rows, cols = crops[:, 0].long(), crops[:, 1].long()
    flipped = cols[:, 16, 16] < cols[:, 16, 15]
    dx = torch.where(flipped, cols[:, 16, 15], cols[:, 16, 16]) - 13
    return rows[:, 16, 16] - 13, dx, flipped


def device_crops(x: torch.Tensor, seed: int = 0, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    batches = list(DeviceLoader(x, torch.arange(len(x)), 500, **RAW, device=device, shuffle=True, crop_padding=4,
                                flip=True, seed=seed))
    return torch.cat([b.round().to(torch.uint8) for b, _ in batches]).cpu(), torch.cat([y for _, y in batches]).cpu()


def joint_histogram(dy, dx, flipped) -> np.ndarray:
    return np.bincount((flipped.long() * 81 + dy * 9 + dx).numpy(), minlength=162)


def multiset(images: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
    """The (image, label) pairs, comparable regardless of order (CIFAR-100 repeats a few images)."""
    pairs = torch.cat([images.reshape(len(images), -1), labels[:, None].to(torch.uint8)], 1)
    return sorted(bytes(row) for row in pairs.numpy())


def test_augmentation_matches_torchvision_distribution():
    n = 8100  # 50 per (offset, flip) cell
    x = coordinate_images(n)
    ours = crop_params(device_crops(x)[0])
    tv = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        theirs = crop_params(torch.stack([torch.from_numpy(np.array(tv(Image.fromarray(img))))
                                          for img in x.permute(0, 2, 3, 1).numpy()]).permute(0, 3, 1, 2))
    for dy, dx, flipped in (ours, theirs):
        assert 0 <= dy.min() and dy.max() <= 8 and 0 <= dx.min() and dx.max() <= 8
        assert stats.chisquare(joint_histogram(dy, dx, flipped)).pvalue > 1e-3  # uniform over 9×9×2
        assert stats.binomtest(int(flipped.sum()), n).pvalue > 1e-3
    assert stats.chi2_contingency(np.stack([joint_histogram(*ours), joint_histogram(*theirs)])).pvalue > 1e-3


@pytest.mark.parametrize("device", DEVICES)
def test_crops_are_exact_windows_of_the_padded_image(device):
    x = coordinate_images(300)
    x[:, 2] = torch.randint(0, 256, (300, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    crops, ids = device_crops(x, seed=1, device=device)
    padded = torch.nn.functional.pad(x[ids], (4,) * 4)
    for crop, image, dy, dx, flipped in zip(crops, padded, *crop_params(crops)):
        window = image[:, dy:dy + 32, dx:dx + 32]
        assert torch.equal(crop, window.flip(2) if flipped else window)


def test_every_sample_once_per_epoch_and_labels_follow_images():
    x = coordinate_images(1000)
    loader = DeviceLoader(x, torch.arange(1000), 64, **RAW, shuffle=True, crop_padding=4, flip=True, seed=0)
    assert len(loader) == 16
    epochs = []
    for _ in range(2):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [64] * 15 + [40]
        ids = torch.cat([y for _, y in batches])
        assert torch.equal(ids.sort().values, torch.arange(1000))
        assert all(torch.equal(xb[:, 2, 16, 16].round().long(), y % 256) for xb, y in batches)
        epochs.append(ids)
    assert not torch.equal(*epochs)  # a fresh permutation each epoch
    dropped = DeviceLoader(x, torch.arange(1000), 64, **RAW, shuffle=True, drop_last=True)
    assert len(dropped) == 15 and len(torch.cat([y for _, y in dropped]).unique()) == 960


def rasampler_stream(perm: torch.Tensor, repeats: int, world: int, rank: int) -> list[int]:
    """DeiT's RASampler (facebookresearch/deit samplers.py) for one epoch's permutation, as it deals the indices
    to rank `rank` of `world`; its epoch cut to n // world per rank here, where DeiT's rounds n down to 256s."""
    indices = torch.repeat_interleave(perm, repeats).tolist()
    total = math.ceil(len(perm) * repeats / world) * world
    indices += indices[:total - len(indices)]
    return indices[rank:total:world][:len(perm) // world]


@pytest.mark.parametrize("n, world, per_rank", [(10, 1, 4), (37, 2, 3), (37, 3, 5), (64, 4, 16)])
def test_repeated_augmentation_deals_each_rank_deits_stream_in_global_batches(n, world, per_rank):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    order = epoch_order(perm, per_rank * world, 3, world)
    slices = [b.tensor_split(world) for b in order.split(per_rank * world)]
    for rank in range(world):
        assert torch.cat([s[rank] for s in slices]).tolist() == rasampler_stream(perm, 3, world, rank)
    assert len(order) == n // world * world and torch.equal(epoch_order(perm, 8), perm)
    if world == 1:  # each image three times in a row, ~a third of the images an epoch
        assert torch.equal(order, perm.repeat_interleave(3)[:n])


def test_a_repeating_loader_augments_each_copy_on_its_own_and_its_ranks_get_deits_streams():
    x = coordinate_images(60)
    options = dict(**RAW, shuffle=True, crop_padding=4, flip=True, seed=0, repeats=3)
    one = DeviceLoader(x, torch.arange(60), 12, **options)
    assert len(one) == 5
    batches = list(one)
    ids = torch.cat([y for _, y in batches])
    assert len(ids) == 60 and (ids.view(-1, 3) == ids.view(-1, 3)[:, :1]).all()  # triples
    views = torch.cat([xb for xb, _ in batches]).view(20, 3, -1)
    assert sum(len({tuple(v.tolist()) for v in triple}) > 1 for triple in views) > 15  # its own crop and flip
    perm = torch.randperm(60, generator=torch.Generator().manual_seed(0))  # the loader's first draw
    for rank in range(2):
        mine = DeviceLoader(x, torch.arange(60), 12, **options, shard=(rank, 2))
        assert torch.cat([y for _, y in mine]).tolist() == rasampler_stream(perm, 3, 2, rank)


@pytest.mark.parametrize("device", DEVICES)
def test_seed_determines_batches(device):
    x = torch.randint(0, 256, (200, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)

    def epoch(seed):
        return list(DeviceLoader(x, torch.arange(200), 32, CIFAR100_MEAN, CIFAR100_STD, device=device,
                                 shuffle=True, crop_padding=4, flip=True, seed=seed))

    same, other = zip(epoch(3), epoch(3)), zip(epoch(3), epoch(4))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in same)
    assert not all(torch.equal(a[0], b[0]) for a, b in other)


def test_normalisation_matches_torchvision():
    x = torch.randint(0, 256, (50, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    tv = T.Compose([T.ToTensor(), T.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    expected = torch.stack([tv(Image.fromarray(img)) for img in x.permute(0, 2, 3, 1).numpy()])
    (got, y), = DeviceLoader(x, torch.arange(50), 64, CIFAR100_MEAN, CIFAR100_STD)
    assert got.dtype == torch.float32 and torch.equal(y, torch.arange(50))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [1, 7, 100, 999])
def test_stratified_holdout(size):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([500, 300, 150, 50])]).roll(123)
    keep, val = stratified_holdout(labels, size, seed=0)
    assert len(val) == size and torch.equal(torch.cat([keep, val]).sort().values, torch.arange(1000))
    share = torch.bincount(labels[val], minlength=4) - size * torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert share.abs().max() < 1
    assert torch.equal(stratified_holdout(labels, size, seed=0)[1], val)
    if size > 1:
        assert not torch.equal(stratified_holdout(labels, size, seed=1)[1], val)


@pytest.mark.parametrize("size", [0, 1000, 2.5, True])
def test_holdout_size_must_fit(size):
    with pytest.raises(MixkdError, match="val_size"):
        stratified_holdout(torch.zeros(1000, dtype=torch.long), size)


def test_hold_out_val_works_on_any_in_memory_dataset():
    ds = create_dataset("synthetic", train_size=100)
    val = hold_out_val(ds, 20, seed=0)
    assert (val.eval_split, len(val.train_y), len(val.eval_y)) == ("val", 80, 20)
    assert multiset(torch.cat([val.train_x, val.eval_x]), torch.cat([val.train_y, val.eval_y])) == \
        multiset(ds.train_x, ds.train_y)


def test_digits_val_split():
    test = create_dataset("digits")
    ds = create_dataset("digits", val_size=100)
    assert (test.eval_split, ds.eval_split) == ("test", "val")
    assert len(ds.train_y) + len(ds.eval_y) == len(test.train_y) and len(ds.eval_y) == 100
    assert torch.equal(torch.bincount(ds.eval_y), torch.full((10,), 10))
    # held out of train: the multiset of training images is preserved
    assert multiset(torch.cat([ds.train_x, ds.eval_x]), torch.cat([ds.train_y, ds.eval_y])) == \
        multiset(test.train_x, test.train_y)


def test_imagefolder(tmp_path):
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 3), ("val", 2)):
        for cls in ("ant", "bee", "cat"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(per_class):
                image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
                Image.fromarray(image).save(tmp_path / split / cls / f"{i}.png")
    ds = create_dataset("imagefolder", tmp_path, img_size=16, num_workers=0)
    assert (ds.num_classes, ds.in_chans, ds.img_size) == (3, 3, 16)
    loader = ds.train_loader(4, "cpu", seed=0)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [tuple(x.shape) for x, _, _ in batches] == [(4, 3, 16, 16)] * 2 + [(1, 3, 16, 16)]
    assert sorted(torch.cat([y for _, y, _ in batches]).tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    index = torch.cat([i for _, _, i in batches])
    assert sorted(index.tolist()) == list(range(9))  # each training image once, by its dataset index
    assert torch.equal(torch.cat([y for _, y, _ in batches]), ds.train_targets[index])

    def order(seed):
        return tuple(torch.cat([y for _, y, _ in ds.train_loader(4, "cpu", seed)]).tolist())

    assert order(0) == tuple(torch.cat([y for _, y, _ in batches]).tolist()) and len({order(s) for s in range(3)}) > 1
    (a, ya), = ds.eval_loader(8, "cpu")
    (b, _), = ds.eval_loader(8, "cpu")
    assert torch.equal(a, b) and ya.tolist() == [0, 0, 1, 1, 2, 2] and a.shape == (6, 3, 16, 16)
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(MixkdError, match="val"):
        create_dataset("imagefolder", tmp_path)
    with pytest.raises(MixkdError, match="data root"):
        create_dataset("imagefolder")


def test_cifar_file_lists_are_torchvisions():
    from torchvision.datasets import CIFAR10, CIFAR100

    for tv, files in ((CIFAR100, CIFAR100_FILES), (CIFAR10, CIFAR10_FILES)):
        assert files == (tv.base_folder, [tuple(f) for f in tv.train_list], [tuple(f) for f in tv.test_list])


# ---- real CIFAR-100 (skipped when the files are missing) ----

@pytest.fixture(scope="module")
def cifar100(cifar_root) -> InMemoryDataset:
    return create_dataset("cifar100", cifar_root)


@pytest.mark.cifar
def test_cifar100_splits(cifar100, cifar_root):
    import torchvision

    ds = cifar100
    assert (ds.num_classes, ds.in_chans, ds.img_size, ds.eval_split) == (100, 3, 32, "test")
    assert ds.train_x.shape == (50000, 3, 32, 32) and ds.eval_x.shape == (10000, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.long
    assert torch.equal(torch.bincount(ds.train_y), torch.full((100,), 500))
    assert torch.equal(torch.bincount(ds.eval_y), torch.full((100,), 100))
    assert (ds.mean, ds.std, ds.crop_padding, ds.flip) == (CIFAR100_MEAN, CIFAR100_STD, 4, True)
    reference = torchvision.datasets.CIFAR100(str(cifar_root), train=False)  # the same pixels, in HWC
    assert torch.equal(torch.from_numpy(reference.data).permute(0, 3, 1, 2), ds.eval_x)
    assert torch.equal(torch.tensor(reference.targets), ds.eval_y)


@pytest.mark.cifar
def test_cifar100_val_split(cifar100, cifar_root):
    ds = create_dataset("cifar100", cifar_root, val_size=5000)
    assert ds.eval_split == "val" and len(ds.train_y) == 45000 and len(ds.eval_y) == 5000
    assert torch.equal(torch.bincount(ds.eval_y), torch.full((100,), 50))
    assert multiset(torch.cat([ds.train_x, ds.eval_x]), torch.cat([ds.train_y, ds.eval_y])) == \
        multiset(cifar100.train_x, cifar100.train_y)


@pytest.mark.cifar
def test_cifar100_train_size_is_a_stratified_seeded_subset_of_the_training_split(cifar100, cifar_root):
    small = create_dataset("cifar100", cifar_root, train_size=1000)
    assert len(small.train_y) == 1000 and torch.equal(torch.bincount(small.train_y), torch.full((100,), 10))
    assert torch.equal(small.eval_x, cifar100.eval_x) and small.eval_split == "test"  # the test set untouched
    assert set(multiset(small.train_x, small.train_y)) <= set(multiset(cifar100.train_x, cifar100.train_y))
    again, smaller = (create_dataset("cifar100", cifar_root, train_size=n) for n in (1000, 500))
    assert torch.equal(again.train_x, small.train_x)  # seeded: the same images every time
    assert set(multiset(smaller.train_x, smaller.train_y)) <= set(multiset(small.train_x, small.train_y))
    other = create_dataset("cifar100", cifar_root, train_size=1000, split_seed=1)
    assert not torch.equal(other.train_x, small.train_x)
    held = create_dataset("cifar100", cifar_root, train_size=1000, val_size=5000)  # drawn from what val leaves
    assert len(held.train_y) == 1000 and len(held.eval_y) == 5000 and held.eval_split == "val"
    assert not set(multiset(held.train_x, held.train_y)) & set(multiset(held.eval_x, held.eval_y))


@pytest.mark.cifar
def test_cifar100_missing_or_corrupt_files(cifar_root, tmp_path):
    with pytest.raises(MixkdError, match="data root"):
        create_dataset("cifar100")
    with pytest.raises(MixkdError, match=r"cifar-100-python/train is missing.*16019d7e3df5f24257cddd939b257f8d"):
        create_dataset("cifar100", tmp_path)
    (tmp_path / "cifar-100-python").mkdir()
    with open(cifar_root / "cifar-100-python" / "train", "rb") as src:
        (tmp_path / "cifar-100-python" / "train").write_bytes(src.read(1 << 20))
    with pytest.raises(MixkdError, match=r"train is corrupt or incomplete.*expected 16019d7e3df5f24257cddd939b257f8d"):
        create_dataset("cifar100", tmp_path)


@pytest.mark.cifar
def test_bench_loader_smoke(cifar_root):
    from mixkd.bench.loader import format_loader_bench, bench_loader

    rows = bench_loader(cifar_root, batches=3, batch_size=16, images=32)
    assert [(r["data"], r["batches"]) for r in rows] == [("cifar100", 3)] * 3 + [("imagefolder", 1)] * 2
    assert all(r["batches_per_s"] > 0 for r in rows) and "rand-m9-mstd0.5-inc1" in rows[2]["pipeline"]
    table = format_loader_bench(rows).splitlines()
    assert len(table) == 6 and table[1].endswith("1.0×") and table[4].endswith("1.0×")
