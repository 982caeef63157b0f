"""Experiment trackers (TensorBoard, Weights & Biases, MLflow) as optional callbacks of every run: off
unless a study's `track:` section or `--track` names them, and, like `resources` and `engine`, never part
of a run id.

Each run gets one tracker run per backend, named by its run id and grouped by its study: its resolved
config as hyperparameters, every epoch record (and images/s) as metrics at step = epoch, its summary at the
end. The study's figures and tables go to a run named `report` once `mixkd run` has written them. Trackers
are opened in the process that trains, from what the `Job` names, so every executor logs alike. A tracker
that fails (not installed on a worker, no network, bad credentials) warns once and is off for the rest of
the process: it never fails a run, and its waits on a server are bounded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from .config import Component, RunSpec
from .errors import ConfigError, MixkdError, StudyWarning
from .registry import Registry
from .schema import resolve_component

TRACKERS: Registry[type] = Registry("tracker", inputs=("run",))
REPORT_TABLES = ("leaderboard.csv", "summary.csv", "runs.csv")  # the `report` run's, beside the figures
HPARAM_METRICS = ("top1_last", "top1_best")  # what TensorBoard's HParams tab sets against the configs


class TrackerWarning(StudyWarning):
    """A tracker failed: it is off for the rest of the process, and the runs go on (one line)."""


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker names, groups and files a run by."""

    name: str  # the run id; `report` for the study's figures and tables
    study: str
    out: Path  # the study's output folder: where trackers that write locally write by default
    role: str = "report"
    config: dict = field(default_factory=dict)  # the resolved config, as its id hashes it
    labels: dict = field(default_factory=dict)  # its names (student, teacher): what a dashboard filters by
    resumed_from: int = 0  # the epoch of the checkpoint it resumes from: the epochs it logs follow it

    @property
    def hparams(self) -> dict:
        return {**self.config, "labels": self.labels} if self.config else {}


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve(section: list) -> list[dict]:
    """A study's `track:` entries, each a tracker's name or `{name: ..., **parameters}`, resolved and
    checked; not whether their packages are installed (`selected`): `ls` and `report` need none."""
    specs = [resolve_component(TRACKERS, entry, f"track[{i}]") for i, entry in enumerate(section)]
    names = [s["name"] for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"track[{i}]", f"{name} is named twice: give each tracker once")
    return specs


def selected(section: list, flags: list[str] | None) -> tuple[Component, ...]:
    """The trackers a `mixkd run` logs to: the study's `track:` and those `--track NAME[,NAME]` adds
    (`none`: no tracker, whatever the study says), each one's package checked before any run starts."""
    names = [n.strip() for flag in flags or [] for n in flag.split(",") if n.strip()]
    if "none" in names:
        if len(set(names)) > 1:
            raise MixkdError(f"--track {','.join(names)}: none turns every tracker off; it goes alone")
        return ()
    for name in names:
        if name not in TRACKERS:
            raise MixkdError(f"{TRACKERS.unknown_message(name, '--track')}, none")
    specs = resolve(section)
    named = {s["name"] for s in specs}
    specs += [resolve_component(TRACKERS, n, "--track") for n in dict.fromkeys(names) if n not in named]
    for spec in specs:
        module = TRACKERS.get(spec["name"]).module
        if not installed(module):
            raise MixkdError(f"tracker {spec['name']} needs {module}, which is not installed: "
                             f"pip install 'mixkd[{spec['name']}]'")
    return tuple(Component.from_dict(s) for s in specs)


_off: set[str] = set()  # backends that failed in this process: off until it ends


def _guarded(backend: str, call, *args, **kwargs):
    """`call`'s result; None when `backend` is off or the call fails, which turns it off with a warning."""
    if backend in _off:
        return None
    try:
        return call(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever a backend raises (no network, bad credentials, a bug)
        _off.add(backend)
        reason = (str(e).strip().splitlines() or [""])[0]
        warnings.warn(f"tracker {backend} failed and is off for the rest of this process, the runs go on: "
                      f"{type(e).__name__}: {reason}", TrackerWarning, stacklevel=2)
        return None


class RunTrackers:
    """One run's tracker runs, one per backend the job names, every call guarded. Opened at the run's
    first record, so that a resumed run's know the epoch it resumes from."""

    def __init__(self, specs: tuple[Component, ...], run: TrackedRun):
        self.specs, self.run, self.resumed_from = specs, run, 0
        self._open: dict[str, Any] | None = None  # None: not opened yet; {}: ended

    @classmethod
    def of(cls, specs: tuple[Component, ...], spec: RunSpec, study: str, out: Path) -> "RunTrackers":
        return cls(specs, TrackedRun(spec.run_id, study, Path(out), spec.role, spec.config, spec.labels))

    def _trackers(self) -> dict[str, Any]:
        if self._open is None:
            run, self._open = replace(self.run, resumed_from=self.resumed_from), {}
            for spec in self.specs:
                tracker = _guarded(spec.name, TRACKERS.get(spec.name), run, **spec.kwargs())
                if tracker is not None:
                    self._open[spec.name] = tracker
        return {name: t for name, t in self._open.items() if name not in _off}

    def log_epoch(self, record: dict) -> None:
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        for name, tracker in self._trackers().items():
            _guarded(name, tracker.log_epoch, record["epoch"], metrics)

    def finish(self, summary: dict) -> None:
        """Log the run's summary and end its tracker runs (as failed, when the run did)."""
        for name, tracker in self._trackers().items():
            _guarded(name, tracker.finish, summary)
        self._open = {}

    def report(self, figures: list[Path], tables: list[Path]) -> None:
        for name, tracker in self._trackers().items():
            _guarded(name, tracker.report, figures, tables)
        self.finish({"status": "complete"})

    def close(self) -> None:
        """End the tracker runs still open (the group was cut short: Ctrl-C, a full disk), marked so."""
        for name, tracker in (self._open or {}).items():
            _guarded(name, tracker.close)
        self._open = {}


class TrackedJournal:
    """A run's journal (its `RunDir`, see `train.Journal`) that also hands each epoch, once written, to the
    run's trackers with its images/s, and them the epoch a resumed run continues from."""

    def __init__(self, journal, trackers: RunTrackers, images: int):
        self.journal, self.trackers, self.images = journal, trackers, images

    def resume_state(self, device: str) -> dict | None:
        state = self.journal.resume_state(device)
        self.trackers.resumed_from = state["epoch"] if state is not None else 0
        return state

    def log_epoch(self, record: dict) -> None:
        self.journal.log_epoch(record)
        self.trackers.log_epoch({**record, "images_per_s": self.images / max(record["seconds"], 1e-9)})

    def save_checkpoint(self, state: dict) -> None:
        self.journal.save_checkpoint(state)


def report_study(specs: tuple[Component, ...], study: str, out: Path) -> None:
    """The study's figures and main tables, once written, to a tracker run named `report` per backend."""
    if not specs:
        return
    out = Path(out)
    tables = [out / name for name in REPORT_TABLES if (out / name).is_file()]
    figures = sorted((out / "figures").glob("*.png"))
    RunTrackers(specs, TrackedRun("report", study, out)).report(figures, tables)


def flat(config: dict, prefix: str = "") -> dict:
    """A nested config with `recipe.lr`-style keys: the form MLflow params and TensorBoard hparams take."""
    items = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            items.update(flat(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def numbers(summary: dict) -> dict[str, float]:
    """The summary's numbers (top1_last, train_seconds, ...), what a tracker plots: text and flags aside."""
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _verbatim(text: str) -> str:
    """`text` as TensorBoard's markdown shows it unchanged: indented."""
    return "\n".join(f"    {line}" for line in text.splitlines())


@TRACKERS.register("tensorboard")
class TensorBoard:
    """TensorBoard event files (torch.utils.tensorboard) in `<dir>/<study>/<run id>`, dir by default
    `<out>/tensorboard`; the config in the HParams tab, against the summary's top-1."""

    module = "tensorboard"

    def __init__(self, run: TrackedRun, dir: str | None = None):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        root = Path(dir) if dir else run.out / "tensorboard"
        # purge_step: what an attempt cut short logged after the checkpoint this one resumes from is
        # dropped, not drawn twice
        self.writer = SummaryWriter(str(root / run.study / run.name), purge_step=run.resumed_from + 1)
        self.epoch = run.resumed_from
        if run.hparams:
            values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                      for k, v in flat(run.hparams).items()}
            for summary in hparams(values, {f"summary/{k}": 0.0 for k in HPARAM_METRICS}):
                self.writer._get_file_writer().add_summary(summary)  # add_hparams', in the run's own folder
            self.writer.add_text("config", _verbatim(json.dumps(run.hparams, indent=1)))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, epoch)
        self.epoch = epoch

    def finish(self, summary: dict) -> None:
        for key, value in numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, self.epoch)
        shown = {k: v for k, v in summary.items() if k != "traceback"}
        self.writer.add_text("summary", _verbatim(json.dumps(shown, indent=1, default=str)), self.epoch)
        self.writer.close()

    def report(self, figures: list[Path], tables: list[Path]) -> None:
        import numpy as np
        import pandas as pd
        from PIL import Image

        for path in figures:
            self.writer.add_image(f"figures/{path.stem}", np.asarray(Image.open(path).convert("RGB")),
                                  dataformats="HWC")
        for path in tables:
            self.writer.add_text(f"tables/{path.stem}", _verbatim(pd.read_csv(path).to_string(index=False)))

    def close(self) -> None:
        self.writer.close()


@TRACKERS.register("wandb")
class WandB:
    """Weights & Biases: a run named by the run id in `project`, grouped by study, its role as job type;
    `mode` online, offline or disabled (default: WANDB_MODE's, else online); files under `dir` (default
    `<out>`)."""

    module = "wandb"
    INIT_TIMEOUT, FINISH_TIMEOUT = 30.0, 60.0  # seconds: a server out of reach costs a run no more

    def __init__(self, run: TrackedRun, project: str = "mixkd", entity: str | None = None,
                 mode: Literal["online", "offline", "disabled"] | None = None, dir: str | None = None):
        import wandb

        folder = Path(dir) if dir else run.out
        folder.mkdir(parents=True, exist_ok=True)
        limits = {"init_timeout": self.INIT_TIMEOUT, "finish_timeout": self.FINISH_TIMEOUT}  # the latter:
        limits = {k: v for k, v in limits.items() if k in wandb.Settings.model_fields}  # recent wandb only
        # console off: the process's output is no one run's (a lockstep group trains several at once)
        settings = wandb.Settings(console="off", **limits)
        # create_new: the runs of a lockstep group are open together in one process
        self.run = wandb.init(project=project, entity=entity, group=run.study, name=run.name,
                              job_type=run.role, config=run.hparams, dir=str(folder), mode=mode,
                              reinit="create_new", settings=settings)
        self.run.define_metric("*", step_metric="epoch")

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.run.log({"epoch": epoch, **metrics})

    def finish(self, summary: dict) -> None:
        self.run.summary.update({**numbers(summary), "status": summary["status"],
                                 **({"error": summary["error"]} if "error" in summary else {})})
        self.run.finish(exit_code=0 if summary["status"] == "complete" else 1)

    def report(self, figures: list[Path], tables: list[Path]) -> None:
        import pandas as pd
        import wandb

        frames = {path.stem: pd.read_csv(path).astype(object) for path in tables}
        self.run.log({**{f"figures/{p.stem}": wandb.Image(str(p)) for p in figures},
                      **{f"tables/{name}": wandb.Table(dataframe=frame.where(frame.notna(), None))
                         for name, frame in frames.items()}})

    def close(self) -> None:
        self.run.finish(exit_code=1)


@TRACKERS.register("mlflow")
class MLflow:
    """MLflow: the study as experiment, the run id as run name, the config as params (`recipe.lr`, ...),
    role and names as tags; at tracking `uri` (default: MLFLOW_TRACKING_URI's, else a file store
    `<out>/mlruns`)."""

    module = "mlflow"

    def __init__(self, run: TrackedRun, uri: str | None = None):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or (run.out / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses it unless asked
        elif uri.startswith(("http:", "https:")):  # a server out of reach fails in seconds, not minutes
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(uri)
        tags = {"mixkd.role": run.role, **{f"mixkd.{k}": str(v) for k, v in run.labels.items()}}
        experiment = self._experiment(run.study)
        self.id = self.client.create_run(experiment, run_name=run.name, tags=tags).info.run_id
        params = [Param(k, str(v)) for k, v in flat(run.config).items()]
        for i in range(0, len(params), 100):  # at most 100 params a call
            self.client.log_batch(self.id, params=params[i:i + 100])
        self.epoch = run.resumed_from

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another process created it meanwhile
            return self.client.get_experiment_by_name(name).experiment_id

    def _log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.client.log_batch(self.id, metrics=[Metric(k, float(v), stamp, step)
                                                for k, v in metrics.items()])

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._log(metrics, epoch)
        self.epoch = epoch

    def finish(self, summary: dict) -> None:
        self._log({f"summary/{k}": v for k, v in numbers(summary).items()}, self.epoch)  # as TensorBoard's
        if "error" in summary:
            self.client.set_tag(self.id, "mixkd.error", summary["error"][:5000])
        self.client.set_terminated(self.id, "FINISHED" if summary["status"] == "complete" else "FAILED")

    def report(self, figures: list[Path], tables: list[Path]) -> None:
        for path in figures:
            self.client.log_artifact(self.id, str(path), "figures")
        for path in tables:
            self.client.log_artifact(self.id, str(path), "tables")

    def close(self) -> None:
        self.client.set_terminated(self.id, "KILLED")
