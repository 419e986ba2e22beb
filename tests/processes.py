"""Driving `nrs` as a real process: start it, wait until it has written rows, signal it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

NRS = Path(sys.executable).with_name("nrs")  # the console script, as a user types it


def interruptible() -> None:
    """In the child: Ctrl-C's default back. A shell starts background jobs with SIGINT ignored, the
    ignoring is inherited, and Python then never raises KeyboardInterrupt (a pytest run with `&`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_nrs(*args, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [str(NRS), *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
    )


def wait_for_rows(out: Path, rows: int, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until the TSV ``out`` holds more than ``rows`` lines (its header included)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if out.exists() and out.read_text().count("\n") > rows:
            return
        time.sleep(0.05)
    raise AssertionError("the run ended before it could be interrupted")
