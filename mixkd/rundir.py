"""A run's directory: config.yaml, epochs.jsonl, summary.json, checkpoint.pt.

`summary.json` is written last and atomically: its presence with status "complete" is what marks a
run as done, so a run killed at any moment is simply trained again on the next `mixkd run`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import pandas as pd
import torch
import yaml

CONFIG, EPOCHS, SUMMARY, CHECKPOINT = "config.yaml", "epochs.jsonl", "summary.json", "checkpoint.pt"
ANALYSIS = "analysis.parquet"


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


class RunDir:
    def __init__(self, root: Path, run_id: str):
        self.path = Path(root) / "runs" / run_id

    def read_summary(self) -> dict | None:
        try:
            return json.loads((self.path / SUMMARY).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def status(self) -> str:
        summary = self.read_summary()
        return summary["status"] if summary else ("running" if (self.path / EPOCHS).exists() else "pending")

    def start(self, config: dict, labels: dict, run_id: str) -> None:
        """Begin (or begin again) a run: config written, per-epoch log emptied, old summary removed."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path / CONFIG, yaml.safe_dump({"run_id": run_id, "labels": labels, "config": config},
                                                        sort_keys=True))
        (self.path / SUMMARY).unlink(missing_ok=True)
        (self.path / ANALYSIS).unlink(missing_ok=True)
        (self.path / EPOCHS).write_text("")

    def log_epoch(self, record: dict) -> None:
        with open(self.path / EPOCHS, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_epochs(self) -> list[dict]:
        try:
            return [json.loads(line) for line in (self.path / EPOCHS).read_text().splitlines() if line]
        except FileNotFoundError:
            return []

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.path / SUMMARY, json.dumps(summary, indent=1, sort_keys=True))

    def write_analysis(self, rows: list[dict]) -> None:
        """The run's tidy analysis rows (run_id, metric, value, qualifiers), see `mixkd.analysis`."""
        buf = io.BytesIO()
        pd.DataFrame(rows).to_parquet(buf, index=False)
        atomic_write(self.path / ANALYSIS, buf.getvalue())

    def read_analysis(self) -> pd.DataFrame | None:
        path = self.path / ANALYSIS
        return pd.read_parquet(path) if path.exists() else None

    def save_model(self, model: torch.nn.Module) -> None:
        """RepDistiller's checkpoint layout ({"model": state_dict}) so other tools can read it too."""
        tmp = self.path / f".{CHECKPOINT}.tmp"
        torch.save({"model": model.state_dict()}, tmp)
        os.replace(tmp, self.path / CHECKPOINT)

    def load_model(self, model: torch.nn.Module) -> torch.nn.Module:
        state = torch.load(self.path / CHECKPOINT, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        return model
