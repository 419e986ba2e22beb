"""The training benchmark stays runnable: its --quick mode prints a row per configuration."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_train_quick_prints_every_configuration():
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "images/s" not in line]
    names = [row.split(" | ")[0].removeprefix("| ") for row in rows]
    assert names == [
        "fp32, contiguous",
        "fp32, channels_last",
        "bf16, contiguous",
        "bf16, channels_last, batch 4",
        "bf16, channels_last, batch 4, noise 0.12",
    ]
    assert all(float(row.split(" | ")[2].replace(",", "")) > 0 for row in rows)  # median images/s
