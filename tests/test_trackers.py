"""Experiment trackers: TensorBoard, wandb (offline) and MLflow (a local file store) hear every epoch, the
config and the summary of each run, and the study's figures; read back, they hold the numbers the run
directories do. A tracker that fails warns once and changes no number; `track:` is checked when the study
is read, and moves no run id."""

import json
import struct
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from wandb.proto import wandb_internal_pb2

from mixkd import trackers
from mixkd.cli import main
from mixkd.errors import ConfigError, MixkdError
from mixkd.rundir import RunDir
from mixkd.study import load_study, parse_study
from tiny import run, tiny_study, write

TRACKED = tiny_study("tracked", track=["tensorboard", {"name": "wandb", "project": "mixkd-tests"}, "mlflow"])
IMAGES = TRACKED["dataset"]["train_size"]
ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MLFLOW_ALLOW_FILE_STORE": "true"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """The tiny study trained once with the three trackers at their defaults, wandb offline; its study,
    output folder and each run's epochs and summary."""
    tmp = tmp_path_factory.mktemp("tracked")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in ENV.items():
            mp.setenv(key, value)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setattr(trackers, "_off", set())
        path, out = write(tmp, TRACKED), tmp / "out"
        assert run(path, out) == 0
        assert not trackers._off  # no tracker failed
        study = load_study(path)
        dirs = {s.run_id: RunDir(out, s.run_id) for s in study.runs}
        yield study, out, {i: (d.read_epochs(), d.read_summary()) for i, d in dirs.items()}


def check_epochs(logged: dict[str, list[tuple[int, float]]], epochs: list[dict]) -> None:
    """`logged`: each quantity's (step, value) as a tracker holds them; `epochs`: the run's epochs.jsonl."""
    for key in [k for k in epochs[0] if k != "epoch"] + ["images_per_s"]:
        expected = [r[key] if key in r else IMAGES / r["seconds"] for r in epochs]
        assert [step for step, _ in logged[key]] == [r["epoch"] for r in epochs], key
        assert [value for _, value in logged[key]] == pytest.approx(expected, rel=1e-6), key  # float32


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_each_runs_epochs_config_and_summary_and_the_studys_figures(tracked):
    study, out, logged = tracked
    for spec in study.runs:  # the scratch and student runs trained in lockstep: each has its own folder
        folder = out / "tensorboard" / study.name / spec.run_id
        epochs, summary = logged[spec.run_id]
        found = scalars(folder)
        check_epochs(found, epochs)
        assert found["summary/top1_last"][0][1] == pytest.approx(summary["top1_last"])
        events = EventAccumulator(str(folder))
        events.Reload()
        assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    report = EventAccumulator(str(out / "tensorboard" / study.name / "report"), size_guidance={"images": 0})
    report.Reload()
    figures = (out / "figures").glob("*.png")
    assert sorted(report.Tags()["images"]) == sorted(f"figures/{p.stem}" for p in figures)


def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file: a LevelDB-style log after a 7-byte header, in
    32 KiB blocks of chunks with 7-byte headers (checksum, length, type: 1 whole, 2 first, 3, 4 last)."""
    data, pos, chunks, block = path.read_bytes(), 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or kind == 0:  # a block's zero-padded tail
            pos += left
            continue
        chunks, pos = chunks + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            yield record
            chunks = b""


def wandb_runs(folder: Path) -> dict[str, dict]:
    """Every offline run under `folder` by name: its run record, history rows, summary and exit code."""
    def items(entries) -> dict:
        return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}

    runs = {}
    for path in folder.glob("wandb/offline-run-*/run-*.wandb"):
        found = {"history": [], "summary": {}}
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                found["run"] = record.run
            elif kind == "history":
                found["history"].append(items(record.history.item))
            elif kind == "summary":
                found["summary"].update(items(record.summary.update))
            elif kind == "exit":
                found["exit_code"] = record.exit.exit_code
        runs[found["run"].display_name] = found
    return runs


def test_wandb_offline_runs_are_named_by_run_id_grouped_by_study_with_config_and_summary(tracked):
    study, out, logged = tracked
    runs = wandb_runs(out)
    assert set(runs) == {s.run_id for s in study.runs} | {"report"}
    for spec in study.runs:
        found = runs[spec.run_id]
        record = found["run"]
        assert (record.project, record.run_group, record.job_type) == ("mixkd-tests", "tracked", spec.role)
        config = {i.key: json.loads(i.value_json) for i in record.config.update}  # top-level keys
        assert config["recipe"] == spec.config["recipe"] and config["labels"] == spec.labels
        epochs, summary = logged[spec.run_id]
        check_epochs({k: [(row["epoch"], row[k]) for row in found["history"]] for k in found["history"][0]},
                     epochs)
        assert found["summary"]["top1_last"] == summary["top1_last"]
        assert found["summary"]["status"] == "complete" and found["exit_code"] == 0
    report = runs["report"]["summary"]
    assert {k for k, v in report.items() if v == "image-file"} == {
        f"figures/{p.stem}/_type" for p in (out / "figures").glob("*.png")}
    assert report["tables/leaderboard/_type"] == "table-file"


def test_mlflow_runs_are_in_the_studys_experiment_with_params_metrics_per_epoch_and_artifacts(tracked):
    study, out, logged = tracked
    client = MlflowClient((out / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("tracked")
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(found) == {s.run_id for s in study.runs} | {"report"}
    for spec in study.runs:
        mlrun = found[spec.run_id]
        assert mlrun.info.status == "FINISHED" and mlrun.data.tags["mixkd.role"] == spec.role
        assert mlrun.data.params["recipe.lr"] == str(spec.config["recipe"]["lr"])
        assert mlrun.data.params["mix.name"] == spec.config["mix"]["name"]
        epochs, summary = logged[spec.run_id]
        history = {key: [(m.step, m.value) for m in client.get_metric_history(mlrun.info.run_id, key)]
                   for key in [*epochs[0], "images_per_s"] if key != "epoch"}
        check_epochs(history, epochs)
        assert mlrun.data.metrics["summary/top1_last"] == pytest.approx(summary["top1_last"])
    artifacts = [a.path for a in client.list_artifacts(found["report"].info.run_id, "figures")]
    assert "figures/accuracy_by_mix.png" in artifacts


def test_a_failing_tracker_warns_once_turns_itself_off_and_changes_no_number(tracked, tmp_path,
                                                                             monkeypatch, capsys):
    _, first, _ = tracked
    calls = []

    def fails(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no network\nsecond line")

    monkeypatch.setattr(trackers.TensorBoard, "__init__", fails)  # at init
    monkeypatch.setattr(trackers.MLflow, "log_epoch", fails)  # at the first epoch
    monkeypatch.setattr(trackers, "_off", set())
    path = write(tmp_path, tiny_study("tracked"))  # no track: section: the flag names them
    assert run(path, tmp_path / "out", "--track", "tensorboard,mlflow") == 0
    err = capsys.readouterr().err
    for backend in ("tensorboard", "mlflow"):
        assert err.count(f"mixkd: warning: tracker {backend} failed and is off for the rest of") == 1
    assert "ConnectionError: no network" in err and "second line" not in err
    assert len(calls) == 2  # once each: a backend that failed is not tried again
    a = pd.read_parquet(first / "epochs.parquet").drop(columns="seconds")
    b = pd.read_parquet(tmp_path / "out" / "epochs.parquet").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    assert (pd.read_csv(tmp_path / "out" / "runs.csv")["status"] == "complete").all()


def test_a_resumed_run_logs_each_epoch_once_at_its_step(tmp_path, monkeypatch):
    real = RunDir.save_checkpoint

    def interrupted(self, state):
        if state["epoch"] == 2:  # epoch 2 is logged, its checkpoint not written: the run resumes from 1
            raise KeyboardInterrupt
        real(self, state)

    monkeypatch.setattr(RunDir, "save_checkpoint", interrupted)
    study = tiny_study("resumed", track=["tensorboard"], baselines=False)
    path, out = write(tmp_path, study), tmp_path / "out"
    assert run(path, out) == 130
    monkeypatch.setattr(RunDir, "save_checkpoint", real)
    assert run(path, out) == 0
    teacher = RunDir(out, load_study(path).runs[0].run_id)
    assert teacher.read_summary()["resumed_from_epoch"] == 1
    folder = out / "tensorboard" / "resumed" / teacher.path.name
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one per attempt
    check_epochs(scalars(folder), teacher.read_epochs())  # epoch 2 once, as the second attempt logged it


@pytest.mark.parametrize("track, says", [
    (["tensorbored"], "track[0].name: unknown tracker 'tensorbored'; did you mean tensorboard?"),
    ([{"name": "wandb", "colour": 1}], "track[0].colour: unknown parameter of tracker 'wandb'; allowed: "
                                       "name, project, entity, mode, dir"),
    ([{"name": "wandb", "mode": "sometimes"}], "track[0].mode: 'sometimes' is not allowed; allowed: online"),
    (["tensorboard", {"name": "tensorboard", "dir": "tb"}], "track[1]: tensorboard is named twice"),
])
def test_a_bad_track_section_is_one_line_when_the_study_is_read(track, says):
    with pytest.raises(ConfigError) as e:
        parse_study(tiny_study("bad", track=track))
    assert says in str(e.value) and "\n" not in str(e.value)


def test_flags_add_to_the_study_trackers_and_none_turns_them_all_off(tmp_path, monkeypatch, capsys):
    names = [c.name for c in trackers.selected(["tensorboard"], ["wandb,mlflow", "tensorboard"])]
    assert names == ["tensorboard", "wandb", "mlflow"]
    assert trackers.selected(["tensorboard", "wandb"], ["none"]) == ()
    assert trackers.selected([{"name": "wandb", "mode": "offline"}], None)[0].kwargs() == {
        "project": "mixkd", "mode": "offline"}
    path = write(tmp_path, tiny_study("flags", track=["wandb"]))
    monkeypatch.setattr(trackers, "installed", lambda module: module != "wandb")
    for extra, says in (((), "tracker wandb needs wandb, which is not installed: pip install 'mixkd[wandb]"),
                        (("--track", "mlfow"), "--track: unknown tracker 'mlfow'; did you mean mlflow?")):
        assert run(path, tmp_path / "out", *extra) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "runs").exists()  # before any run
    assert main(["list", "trackers"]) == 0
    assert "project='mixkd'" in capsys.readouterr().out


def test_a_track_section_moves_no_run_id(tmp_path, capsys):
    quickstart = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"
    tracked = {**yaml.safe_load(quickstart.read_text()), "track": ["tensorboard", {"name": "wandb"}]}
    printed = []
    for path in (quickstart, write(tmp_path, tracked)):
        assert main(["run", str(path), "--dry-run", "--out", str(tmp_path / "out")]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]


def test_none_goes_alone_on_the_command_line():
    with pytest.raises(MixkdError, match="none turns every tracker off; it goes alone"):
        trackers.selected([], ["none,tensorboard"])
    assert trackers.selected(["tensorboard"], ["none"]) == ()
