"""One run across devices (`recipe.devices`, `mixkd.ranks`), on the CPU: 2 ranks (processes, gloo) train what
one process trains with the same global batch, a 2-rank run killed mid-training resumes exactly, and settings
that cannot work are refused in one line."""

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mixkd.build import build_model
from mixkd.config import RunSpec
from mixkd.data import DeviceLoader, create_dataset
from mixkd.errors import ConfigError, MixkdError
from mixkd.executors.ray_tasks import across_devices
from mixkd.ranks import check_devices
from mixkd.rundir import RunDir
from mixkd.study import load_study, parse_study
from mixkd.train import mixing_rng
from tiny import (RECIPE, TIMEOUT, comparable, image_folder, mixkd_command, poll, run, subprocess_env,
                  tiny_study, write)

# LayerNorm, no BatchNorm: each rank's BatchNorm normalises its shard with the shard's statistics, so a model
# with BatchNorm trains differently on 2 devices by design (recipe.sync_bn shares them, on CUDA)
VIT = {"model": "timm/vit_tiny_patch16_224", "model_args": {"patch_size": 4, "embed_dim": 16, "depth": 1,
                                                            "num_heads": 2}}
EPOCHS = 20  # 60 steps: long enough for a kill to land in the middle of the 2-rank run
STUDY = tiny_study("ddp", recipe={**RECIPE, "epochs": EPOCHS},
                   students={"one": VIT, "two": {**VIT, "recipe": {"devices": 2}}}, baselines=False)
# float32 sums in another order (each rank's half of the batch, then the two halves), grown over 60 steps of SGD
# with momentum: 2e-5 measured, on weights of magnitude ~1 that moved by more than 0.1
TOLERANCE = 1e-4


def named(study, name: str) -> RunSpec:
    return next(r for r in study.runs if r.names.name == name)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The study trained without interruption: teacher, "one" in this process, "two" on 2 ranks."""
    tmp = tmp_path_factory.mktemp("ddp")
    path, out = write(tmp, STUDY), tmp / "out"
    assert run(path, out) == 0
    return path, out, load_study(path)


def test_two_ranks_train_what_one_process_trains_with_the_same_global_batch(trained):
    _, out, study = trained
    one, two = named(study, "one"), named(study, "two")
    assert one.run.recipe.devices == 1 and two.run.recipe.devices == 2 and one.run_id != two.run_id
    weights = [RunDir(out, r.run_id).load_checkpoint()["model"] for r in (one, two)]
    torch.manual_seed(one.run.seed)  # the weights both started from
    start = build_model(one.run, create_dataset("synthetic", train_size=96, test_size=32)).state_dict()
    moved = max((weights[0][k] - start[k]).abs().max().item() for k in start)
    assert moved > 100 * TOLERANCE
    for k in start:
        torch.testing.assert_close(weights[1][k], weights[0][k], rtol=0, atol=TOLERANCE)
    # the logged training loss (the teacher's KD term included) is the global batch's, summed over the ranks
    epochs = [pd.DataFrame(RunDir(out, r.run_id).read_epochs()) for r in (one, two)]
    for column in ("train_loss", "train_kd", "test_loss"):
        np.testing.assert_allclose(epochs[1][column], epochs[0][column], rtol=1e-3)


def processes_in_group(pgid: int) -> list[int]:
    """The live processes of process group `pgid` (zombies, which only wait to be reaped, are not)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if int(group) == pgid and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the ranks through /proc")
def test_a_two_rank_run_killed_with_sigkill_resumes_to_the_uninterrupted_results(trained, tmp_path):
    path, reference, study = trained
    out, two = tmp_path / "killed", RunDir(tmp_path / "killed", named(study, "two").run_id)
    victim = subprocess.Popen(mixkd_command(path, out), env=subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    poll(lambda: (two.path / "checkpoint.pt").exists(), victim, "a checkpoint of the 2-rank run")
    os.kill(victim.pid, signal.SIGKILL)  # the launcher, which holds the run's claim
    victim.wait(TIMEOUT)
    victim.stdout.close()
    deadline = time.monotonic() + 10
    while processes_in_group(victim.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_in_group(victim.pid), "the ranks outlived their launcher"

    state = two.training_state()
    assert 1 <= state["epoch"] < EPOCHS and two.read_summary() is None
    # every rank's own streams: rank 1 draws (dropout, drop-path) from a stream of its own
    assert len(state["rng"]) == 2 and not torch.equal(state["rng"][0]["torch"], state["rng"][1]["torch"])
    assert run(path, out) == 0
    assert two.read_summary()["resumed_from_epoch"] == state["epoch"]
    for got, want in zip(comparable(out), comparable(reference)):
        pd.testing.assert_frame_equal(got, want)


def test_each_rank_keeps_its_slice_of_every_batch_the_one_loader_draws():
    images, labels = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8), torch.arange(40) % 4
    mean, std = (0.5,) * 3, (0.25,) * 3

    def loader(shard):
        return DeviceLoader(images, labels, 16, mean, std, shuffle=True, crop_padding=2, flip=True, seed=3,
                            indexed=True, random_erasing=0.5, shard=shard)

    whole = list(loader((0, 1)))
    ranks = [list(loader((r, 3))) for r in range(3)]  # 16, 16 and 8 images: uneven shards
    assert [len(x) for x, _, _ in ranks[0]] == [6, 6, 3]
    for b, (x, y, index) in enumerate(whole):
        for got, want in zip(zip(*(ranks[r][b] for r in range(3))), (x, y, index)):
            torch.testing.assert_close(torch.cat(got), want, rtol=0, atol=0)


def test_image_folder_ranks_keep_their_slices_of_the_batches_one_loader_draws(tmp_path):
    data = create_dataset("imagefolder", root=image_folder(tmp_path, per_class=5, size=8), img_size=8,
                          num_workers=0)
    whole = [index for _, _, index in data.train_loader(4, "cpu", 1)]
    ranks = [[index for _, _, index in data.train_loader(4, "cpu", 1, shard=(r, 2))] for r in range(2)]
    assert [len(i) for i in ranks[1]] == [2, 2, 2, 1]  # 15 images: 4, 4, 4 and 3
    for b, index in enumerate(whole):
        torch.testing.assert_close(torch.cat([ranks[0][b], ranks[1][b]]), index)


def test_rank_0_mixes_with_the_runs_stream_and_each_other_rank_with_its_own():
    draws = [mixing_rng(7, rank).random(3) for rank in (0, 1, 2)]
    np.testing.assert_array_equal(draws[0], np.random.default_rng([7, 1]).random(3))  # as before ranks
    assert len({tuple(d) for d in draws}) == 3


def test_devices_and_sync_bn_stay_out_of_the_ids_of_runs_that_do_not_use_them():
    base = parse_study(tiny_study("ids"))
    assert all("devices" not in r.config["recipe"] and "sync_bn" not in r.config["recipe"] for r in base.runs)
    two = parse_study(tiny_study("ids", recipe={**RECIPE, "devices": 2}))
    assert two.runs[0].config["recipe"]["devices"] == 2
    assert {r.run_id for r in two.runs}.isdisjoint(r.run_id for r in base.runs)


@pytest.mark.parametrize("recipe, message", [
    ({"devices": 0}, "recipe.devices: must be > 0"),
    ({"devices": 3}, "recipe.batch_size: is the global batch, split evenly over the 3 devices"),
    ({"sync_bn": True}, "recipe.sync_bn: shares BatchNorm statistics between devices: it needs devices > 1"),
    ({"devices": 4, "batch_size": 64}, "leaves an epoch's last batch 2 of the 66 images, too few for one on"),
])
def test_settings_a_run_across_devices_cannot_use_are_refused_when_the_study_is_read(recipe, message):
    study = tiny_study("bad", recipe={**RECIPE, **recipe}, dataset={"name": "synthetic", "train_size": 66})
    with pytest.raises(ConfigError, match=message):
        parse_study(study)


def test_a_method_with_a_memory_of_every_image_is_refused_across_devices():
    study = tiny_study("crd", recipe={**RECIPE, "devices": 2}, grid={"loss": ["crd"]})
    with pytest.raises(ConfigError, match="grid.loss: loss 'crd' keeps a memory of every image"):
        parse_study(study)


def test_sync_bn_off_cuda_is_refused_in_one_line():
    study = parse_study(tiny_study("sync", recipe={**RECIPE, "devices": 2, "sync_bn": True}))
    with pytest.raises(MixkdError, match="recipe.sync_bn: SyncBatchNorm runs on CUDA only") as e:
        check_devices(study.runs[0].run.recipe, torch.device("cpu"))
    assert "\n" not in str(e.value)


def test_a_ray_task_of_a_run_across_devices_asks_for_its_devices():
    """(Slurm's arrays: tests/test_slurm.py.) Its ranks are processes the task starts, on the GPUs it got."""
    assert across_devices(1.0, 0.25, 1) == {}  # one device: the study's resources, fractions and all
    assert across_devices(2.0, 0.25, 4) == {"num_cpus": 8.0, "num_gpus": 4.0}
    assert across_devices(1.0, 0.0, 2) == {"num_cpus": 2.0, "num_gpus": 0.0}  # CPU runs: gloo ranks


def test_a_ray_task_starts_the_ranks_of_a_run_across_devices_and_trains_the_same_tables(trained, tmp_path):
    """The ranks are processes the run's Ray task starts itself (spawned inside a Ray worker)."""
    import ray

    path, reference, _ = trained
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        assert run(path, tmp_path / "out", "--executor", "ray") == 0
    finally:
        ray.shutdown()
    for got, want in zip(comparable(tmp_path / "out"), comparable(reference)):
        pd.testing.assert_frame_equal(got, want)
