"""The prepared device check stays runnable: its --quick mode on the CPU (the real run needs a lent GPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_runs_in_quick_mode_and_prints_every_table(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_check.sh"), "--quick", str(tmp_path / "out")],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for heading in (
        "## CERTIFY, mnist_cnn",
        "## CERTIFY, resnet50",
        "## Algorithm 1 step, resnet50",
        "## ImageNet-shaped CERTIFY",
        "noise share (profiler)",
        "every step passed",
    ):
        assert heading in result.stdout, heading
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "certify-mnist.log",
        "certify-resnet50.log",
        "gpu-tests.log",
        "headline.log",
        "optimize-resnet50.log",
    ]
