from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/fixtures.py

from nrs_cli.cli import main  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run ``nrs ARGS...`` in this process; returns exit code, stdout and stderr."""

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def trained_mini(tmp_path_factory) -> Path:
    """`nrs train-base` with no arguments, run once in a scratch folder: the mnist-mini base model."""
    workdir = tmp_path_factory.mktemp("trained-mini")
    previous = Path.cwd()
    os.chdir(workdir)
    try:
        main(["train-base"])
    except SystemExit as exit_:
        assert exit_.code in (0, None), "nrs train-base failed"
    finally:
        os.chdir(previous)
    return workdir / "runs" / "mnist-mini" / "base"
