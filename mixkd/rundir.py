"""A run's directory: config.yaml, epochs.jsonl, summary.json, checkpoint.pt, and the .lock runners claim.

`summary.json` is written last and atomically: its presence with status "complete" is what marks a
run as done. `checkpoint.pt` holds the model, and while training also the optimizer, step, epoch and
every RNG state, so a run killed at any moment resumes from its last checkpoint on the next `mixkd run`.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import pandas as pd
import torch
import yaml

from .config import RunSpec
from .errors import MixkdError, NoSpaceLeft
from .models.checkpoint import unreadable_reason

CONFIG, EPOCHS, SUMMARY, CHECKPOINT = "config.yaml", "epochs.jsonl", "summary.json", "checkpoint.pt"
ANALYSIS, LOCK = "analysis.parquet", ".lock"
# libyaml's safe loader when PyYAML was built with it: 5× faster, and every `mixkd run` reads each run's config
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# write errors that no retry of the run can fix, so they stop the study with one line
_FATAL_WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                       errno.EFBIG: "file too large (a filesystem or `ulimit -f` limit)"}


class DamagedRun(MixkdError):
    """Part of what a run wrote is cut or gone: deleted, or damaged by something other than mixkd, whose
    writes are atomic or appends it knows how to cut back."""

    def __init__(self, problem: str, remedy: str):
        self.problem = problem
        super().__init__(f"{problem}: {remedy}")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Turn a failed write into one line naming the file, instead of a traceback; a full disk stops the study
    rather than marking a run failed that nothing is wrong with."""
    try:
        yield
    except OSError as e:
        if e.errno in _FATAL_WRITE_ERRORS:
            raise NoSpaceLeft(f"{_FATAL_WRITE_ERRORS[e.errno]} writing {path}") from None
        raise MixkdError(f"cannot write {path}: {e.strerror or e}") from None


def umask() -> int:
    """The process's umask (reading it means setting it, so it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """`write` into a temporary file of the same directory, then rename it over `path`. The file gets the mode
    the umask gives a new file: mkstemp's is 0600 whatever the umask, which others sharing the filesystem
    (a cluster's group) cannot read."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.fchmod(fd, 0o666 & ~umask())
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def locks_held() -> frozenset[tuple[int, int, int]]:
    """(device major, minor, inode) of every file an flock is held on by a process of this machine, from Linux's
    /proc/locks (empty elsewhere, and for locks taken on other nodes of a shared filesystem)."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return frozenset()
    held = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].count(":") == 2:
            major, minor, inode = fields[5].split(":")
            held.add((int(major, 16), int(minor, 16), int(inode)))
    return frozenset(held)


def atomic_write(path: Path, data: bytes | str | memoryview) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    _write_atomically(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))


def check_writable(out: Path) -> None:
    """Fail before any run starts when the output directory cannot be created or written, or holds a folder
    where mixkd writes a table."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise MixkdError(f"cannot write to the output directory {out}: {e.strerror or e}") from None
    for table in [*out.glob("*.csv"), *out.glob("*.parquet")]:
        if table.is_dir():
            raise MixkdError(f"{table} is a folder where mixkd writes a table: move it aside")


def _epoch_record(line: str) -> dict | None:
    """A line of epochs.jsonl as the record it holds; None when it holds none."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("epoch"), int) else None


class RunDir:
    def __init__(self, root: Path, run_id: str):
        self.path = Path(root) / "runs" / run_id

    def read_summary(self) -> dict | None:
        """The run's summary; None while it has none. mixkd writes it atomically, so one it cannot read was
        damaged by something else: a one-line error says so."""
        path = self.path / SUMMARY
        try:
            summary = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            self.check_usable()
            raise
        except (OSError, ValueError) as e:  # ValueError: JSON's errors, and bytes that are not UTF-8
            summary = f"{type(e).__name__}: {e.strerror if isinstance(e, OSError) else str(e).splitlines()[0]}"
        if not isinstance(summary, dict) or "status" not in summary:
            reason = summary if isinstance(summary, str) else f"holds {str(summary)[:40]}"
            raise MixkdError(f"{path}: not a run summary ({reason}); delete it, and `mixkd run` finishes the run "
                             f"from its checkpoint")
        return summary

    def read_config(self) -> dict | None:
        """The resolved config this directory was trained with, as `start` saved it; a one-line error when
        something else damaged the file."""
        path = self.path / CONFIG
        try:
            saved = yaml.load(path.read_text(), Loader=SAFE_LOADER)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, yaml.YAMLError) as e:
            saved = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
            reason = saved if isinstance(saved, str) else f"holds {str(saved)[:40]}"
            raise MixkdError(f"{path}: not a run config ({reason}); move {self.path} aside to train the run again")
        return saved["config"]

    def check_usable(self) -> None:
        """Fail in one line when the directory (or `runs/` above it) is a file, or its lock a folder."""
        for path, folder, what in ((self.path.parent, True, "its run directories"),
                                   (self.path, True, "a run's directory"), (self.path / LOCK, False, "a run's lock")):
            if path.exists() and path.is_dir() != folder:
                raise MixkdError(f"{path} is a {'file' if folder else 'folder'} where mixkd keeps {what}: move it "
                                 f"aside")

    def status(self) -> str:
        summary = self.read_summary()
        return summary["status"] if summary else ("running" if (self.path / EPOCHS).exists() else "pending")

    @contextmanager
    def claim(self) -> Iterator[bool]:
        """Hold the run's lock for the with-block; yields False when another runner holds it.

        An flock dies with its process, so a runner killed with -9 leaves no stale lock behind.
        """
        with self._lock_file() as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held = True
            except BlockingIOError:
                held = False
            yield held

    def is_claimed(self) -> bool:
        with self.claim() as held:
            return not held

    def held_here(self, locks: frozenset[tuple[int, int, int]]) -> bool:
        """Whether a process holds the run's lock, by `locks_held()`: a probe that took the lock, even for an
        instant, would make a runner claiming the run then skip it."""
        try:
            st = (self.path / LOCK).stat()
        except OSError:
            return False
        return (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locks

    def wait_until_released(self) -> None:
        with self._lock_file() as f:
            fcntl.flock(f, fcntl.LOCK_EX)

    def _lock_file(self):
        self.path.mkdir(parents=True, exist_ok=True)
        return open(self.path / LOCK, "a")

    def start(self, spec: RunSpec) -> None:
        """Begin (or resume) a run: config written, old summary removed. The epoch log is kept for
        `truncate_epochs`, which cuts it back to the checkpoint the run resumes from."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / CONFIG, yaml.safe_dump({"run_id": spec.run_id, "labels": spec.labels,
                                                         "config": spec.config}, sort_keys=True))
        (self.path / SUMMARY).unlink(missing_ok=True)
        (self.path / ANALYSIS).unlink(missing_ok=True)
        with writing(self.path / EPOCHS):
            (self.path / EPOCHS).touch()

    def log_epoch(self, record: dict) -> None:
        path = self.path / EPOCHS
        with writing(path), open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_epochs(self) -> list[dict]:
        """The logged epochs. While the run is unfinished a last line cut short (a kill or a full disk mid-append)
        is dropped: its epoch is after the last checkpoint, so it will be trained and logged again. Any other
        line that is no epoch record is damage, which DamagedRun names."""
        path = self.path / EPOCHS
        try:
            lines = [line for line in path.read_text(errors="replace").splitlines() if line]
        except FileNotFoundError:
            return []
        records = [_epoch_record(line) for line in lines]
        for i, record in enumerate(records, 1):
            if record is None and (i < len(lines) or self.status() == "complete"):
                raise DamagedRun(f"{path}: line {i} is not an epoch record", "`mixkd run` trains the run again")
        return [r for r in records if r is not None]

    def truncate_epochs(self, epoch: int) -> bool:
        """Keep the log of epochs 1..`epoch` only: those after the checkpoint will be trained again. False, and
        nothing kept, when the log lacks some of them: resuming would keep that gap for good."""
        try:
            kept = [r for r in self.read_epochs() if r["epoch"] <= epoch]
        except DamagedRun:
            kept = []
        whole = [r["epoch"] for r in kept] == list(range(1, epoch + 1))
        atomic_write(self.path / EPOCHS, "".join(json.dumps(r) + "\n" for r in kept) if whole else "")
        return whole

    def damage(self, epochs: int) -> str | None:
        """What a complete run lacks of what it wrote (a record of each of its `epochs` epochs, its analyses),
        or None."""
        try:
            logged = [r["epoch"] for r in self.read_epochs()]
        except DamagedRun as e:
            return e.problem
        if logged != list(range(1, epochs + 1)):
            return f"{self.path / EPOCHS} logs {len(logged)} epochs, not epochs 1 to {epochs} in turn"
        if not (self.path / ANALYSIS).exists():
            return f"{self.path / ANALYSIS} is missing"
        return None

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary, indent=1, sort_keys=True))

    def write_analysis(self, rows: list[dict]) -> None:
        """The run's tidy analysis rows (run_id, metric, value, qualifiers), see `mixkd.analysis`."""
        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        atomic_write(self.path / ANALYSIS, buf.getvalue())

    def read_analysis(self) -> pd.DataFrame | None:
        """The run's analysis rows; None while it has none. A complete run has them (they are written before
        its summary), so their absence there is damage."""
        path = self.path / ANALYSIS
        if path.exists():
            try:
                return pd.read_parquet(path)
            except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a damaged file
                raise DamagedRun(f"{path}: unreadable ({type(e).__name__})",
                                 "delete it, and `mixkd run` analyses the run again") from None
        if self.status() == "complete":
            raise DamagedRun(f"{path} is missing although the run is complete", "`mixkd run` analyses it again")
        return None

    def save_checkpoint(self, state: dict) -> None:
        """RepDistiller's layout ({"model": state_dict, "optimizer": ..., "epoch": ...}) so other tools can
        read it too; written to a temporary file and renamed, so a kill never leaves half a checkpoint.
        Serialised in memory first: torch.save turns a full disk into a RuntimeError, not an OSError."""
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.path / CHECKPOINT, buffer.getbuffer())

    def load_checkpoint(self) -> dict | None:
        """The checkpoint, or None when there is none or it cannot be read. mixkd replaces it atomically, so an
        unreadable one was damaged by something else: the run is trained again from its start, not failed for
        ever (a retry would only read it again)."""
        path = self.path / CHECKPOINT
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as e:  # noqa: BLE001 - torch.load raises many types for a damaged file
            print(f"{path}: unreadable ({unreadable_reason(e)}); training its run again from the start", flush=True)
            return None

    def training_state(self) -> dict | None:
        """The last checkpoint if it can resume training (an imported teacher's holds the model only)."""
        state = self.load_checkpoint()
        return state if state is not None and "epoch" in state else None

    def resume_state(self, device: str) -> dict | None:
        """The checkpoint a run on `device` (a device type) resumes from, its epoch log cut back to it; None,
        and the log emptied, when it starts afresh. A checkpoint written on another device type is an error:
        the data order and augmentation streams it continues live there."""
        state = self.training_state()
        if state is not None:
            written_on = state.get("device", "cpu")
            if written_on != device:
                raise MixkdError(f"its checkpoint (epoch {state['epoch']}) was written on {written_on}, "
                                 f"and the data order and augmentation streams it continues live there: "
                                 f"resume it with --device {written_on} (and --retry-failed), or delete "
                                 f"{self.path / CHECKPOINT} to train it afresh on {device}")
            if not self.truncate_epochs(state["epoch"]):
                print(f"{self.path / EPOCHS} lacks some of epochs 1 to {state['epoch']}, which its "
                      f"checkpoint follows: training the run again from the start", flush=True)
                state = None
        if state is None:
            self.truncate_epochs(0)
        return state

    def load_model(self, model: torch.nn.Module) -> torch.nn.Module | None:
        """`model` with the checkpoint's weights; None without a readable checkpoint."""
        state = self.load_checkpoint()
        if state is None:
            return None
        model.load_state_dict(state["model"])
        return model

    def reopen(self) -> None:
        """Make a complete run one to do again (e.g. its students need the checkpoint that is gone); call it
        holding the run's claim."""
        (self.path / SUMMARY).unlink(missing_ok=True)
