"""Check at start that the data folder can take writes, so it fails early and says why."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

#: Below this much free space a worker refuses to start (state, logs and vectors grow).
DEFAULT_MIN_FREE_MB = 100


class DataDirError(RuntimeError):
    """The data folder is unusable; the message says which folder and what to do."""


def check_writable(path: Path, min_free_mb: int = DEFAULT_MIN_FREE_MB) -> None:
    """Create ``path`` if needed, write and fsync a probe file, and check free space."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}"
        with probe.open("wb") as f:
            f.write(b"scenerec")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        hint = "the disk is full" if exc.errno == errno.ENOSPC else "it is not writable"
        raise DataDirError(
            f"data folder {path} cannot be used: {hint} ({exc.strerror or exc}); "
            "set SCENEREC_VAR_DIR to a writable folder with free space"
        ) from exc
    free_mb = shutil.disk_usage(path).free // (1024 * 1024)
    if free_mb < min_free_mb:
        raise DataDirError(
            f"data folder {path} has only {free_mb} MiB free (need {min_free_mb} MiB); "
            "free some space or set SCENEREC_VAR_DIR to another disk"
        )
