"""Driving `nrs` as a real process: start it, hold it at a known point, signal it.

Tests of two writers, signals and kills never race the process they drive: the process is held at a
known point by the test-only hook ``NRS_TEST_PAUSE`` (:func:`nrs_cli.io.runstate.pause_for_tests`)
and released by the test, so the outcome is the same on an idle and on a loaded machine.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nrs_cli.io.runstate import TEST_PAUSE

NRS = Path(sys.executable).with_name("nrs")  # the console script, as a user types it


def interruptible() -> None:
    """In the child: Ctrl-C's default back. A shell starts background jobs with SIGINT ignored, the
    ignoring is inherited, and Python then never raises KeyboardInterrupt (a pytest run with `&`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


_holds = itertools.count()  # a file of its own for every hold


class Hold:
    """Where a process started with it waits: after ``count`` ``point`` (rows, epochs), until released."""

    def __init__(self, folder: Path, point: str, count: int):
        self.go = folder / f"release-{point}-{count}-{next(_holds)}"
        self.env = {TEST_PAUSE: f"{point} {count} {self.go}"}

    @property
    def reached(self) -> bool:
        return self.go.with_name(self.go.name + ".paused").exists()

    def wait(self, *processes: subprocess.Popen, timeout: float = 300) -> None:
        """Until a process is held there (one that ended first fails the test, with its stderr)."""
        deadline = time.time() + timeout
        while not self.reached:
            for process in processes:
                assert process.poll() is None, process.communicate()
            assert time.time() < deadline, "the process never reached the point it should wait at"
            time.sleep(0.02)

    def release(self) -> None:
        self.go.touch()


def start_nrs(*args, cwd: Path | None = None, hold: Hold | list[Hold] | None = None) -> subprocess.Popen:
    holds = hold if isinstance(hold, list) else [hold] if hold else []
    return subprocess.Popen(
        [str(NRS), *map(str, args)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=interruptible,
        env={**os.environ, **({TEST_PAUSE: ";".join(h.env[TEST_PAUSE] for h in holds)} if holds else {})},
    )
