"""Where and with what a run was computed, recorded in every summary."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import torch


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cluster_job() -> str | None:
    """The Slurm job (array task) training this process, as `squeue` and `sacct` name it; a local submitit
    job's id off Slurm; None outside any job."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def environment(device: torch.device) -> dict:
    from . import __version__

    cuda = device.type == "cuda"
    return {"mixkd_version": __version__, "git_commit": git_commit(), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda if cuda else None,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor()
            or platform.machine(), "hostname": platform.node(), "cluster_job": cluster_job()}
