"""The SLURM side of stopping: which job to requeue, and asking SLURM to requeue it.

Importable anywhere (it only reads the environment it is given and runs ``scontrol`` when asked).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping


class RequeueError(Exception):
    """SLURM did not take the job back; the message says why."""


def requeue_target(env: Mapping[str, str]) -> str | None:
    """The job id ``scontrol requeue`` needs, or None outside a SLURM job.

    An array task is named ``<array job>_<task>``: its own SLURM_JOB_ID is a plain number that, for the first
    task to start, equals the array's id, and requeueing that would take back every task of the array.
    """
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return f"{array_job}_{task}" if array_job and task else job


def requeue(job: str, timeout: float = 60.0) -> None:
    """Put a running batch job back in the queue. SLURM then ends this allocation (SIGTERM, later SIGKILL), so
    call it only once everything worth keeping is on disk."""
    try:
        subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=timeout, check=True)
    except FileNotFoundError as error:
        raise RequeueError("scontrol is not on PATH") from error
    except subprocess.TimeoutExpired as error:
        raise RequeueError(f"`scontrol requeue {job}` did not answer within {timeout:.0f} s") from error
    except subprocess.CalledProcessError as error:
        reason = (error.stderr or error.stdout or "").strip() or f"exit code {error.returncode}"
        raise RequeueError(f"`scontrol requeue {job}` failed: {reason}") from error
