"""What runs show while they go: a bar over the whole sweep on a terminal, plain lines in a pipe."""

import fcntl
import io
import os
import pty
import re
import struct
import subprocess
import termios

from processes import NRS
from rich.console import Console

from nrs_cli.cli.progress import LineProgress, amount, remaining

SWEEP = ["optimize-sigma", "--inits", 2, "--sub-epochs", 1, "--steps", 2, "--batch-size", 8, "--n0", 4]
SWEEP += ["--eval-max", 12, "--eval-n0", 8, "--eval-n", 32]
ENV = {key: value for key, value in os.environ.items() if not key.startswith(("TTY_", "FORCE_COLOR", "COLUMNS"))}


def sweep_args(trained_mini, tmp_path):
    return [*SWEEP, "--checkpoint", trained_mini / "checkpoint.pt", "--runs-dir", tmp_path]


def run_in_terminal(args, cwd) -> list[str]:
    """``nrs ARGS`` with a terminal (200 columns) as its output, as typed by a user: the lines it drew,
    colours dropped, every cursor movement a line break."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    command = [str(NRS), *map(str, args)]
    env = {**ENV, "TERM": "xterm-256color"}
    process = subprocess.Popen(command, stdin=terminal, stdout=terminal, stderr=terminal, cwd=cwd, env=env)
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the program closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert process.wait(timeout=300) == 0, drawn.decode(errors="replace")[-2000:]
    text = re.sub(r"\x1b\[[0-9;]*m", "", drawn.decode())
    return [line for line in re.split(r"\x1b\[[0-9;?]*[A-Za-z]|[\r\n]", text) if line.strip()]


def test_the_sweep_bar_on_a_terminal_shows_its_total_and_an_eta_during_the_isotropic_baseline(trained_mini, tmp_path):
    lines = run_in_terminal(sweep_args(trained_mini, tmp_path), tmp_path)
    first_point = next(k for k, line in enumerate(lines) if "isotropic sigma" in line)
    bars = [(k, line) for k, line in enumerate(lines) if " samples " in line]
    assert bars and bars[0][0] < first_point, lines
    totals = {re.search(r"/(\S+) samples", line).group(1) for _, line in bars}
    assert len(totals) == 1 and "?" not in totals, totals  # known from the first frame on, never changed
    baseline = [line for k, line in bars if k < first_point]
    assert any(re.search(r"ETA \d+:\d\d:\d\d evaluating isotropic σ = ", line) for line in baseline), baseline
    assert any(re.search(r"ETA \d+:\d\d:\d\d sigma 0.\d+ sub-epoch 1: step \d/2, loss", line) for _, line in bars)


def test_a_piped_sweep_prints_progress_lines(trained_mini, tmp_path):
    result = subprocess.run(
        [str(NRS), *map(str, sweep_args(trained_mini, tmp_path))], capture_output=True, text=True, env=ENV
    )
    assert result.returncode == 0, result.stderr
    pattern = r"^\d+% [\d.]+k?/([\d.]+k?) samples, \d+:\d\d:\d\d elapsed, ETA (\S+): (.*)$"
    progress = re.findall(pattern, result.stdout, flags=re.MULTILINE)
    assert progress[0][1:] == ("?", "sweep")  # the total, as soon as it is known
    assert progress[-1][1] == "0:00:00" and result.stdout.count("100% ") == 1  # and when it is reached
    assert len({total for total, _, _ in progress}) == 1
    assert "\x1b" not in result.stdout  # no terminal control codes in a file


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_lines_come_every_interval_with_the_pace_since_the_start():
    console = Console(file=io.StringIO(), record=True, width=200)
    clock = FakeClock()
    lines = LineProgress(console, interval=10.0, clock=clock)
    task = lines.add_task("sweep", total=1000, completed=200, first=200, unit="samples")  # resumed at 200
    for second in range(1, 26):
        clock.now = second
        lines.update(task, completed=200 + 30 * second)
    clock.now = 27.0
    lines.update(task, completed=1000, description="done")
    printed = console.export_text().splitlines()
    assert printed == [
        "20% 200/1k samples, 0:00:00 elapsed, ETA ?: sweep",
        "50% 500/1k samples, 0:00:10 elapsed, ETA 0:00:17: sweep",  # 300 in 10 s: 500 left take 16.7 s
        "80% 800/1k samples, 0:00:20 elapsed, ETA 0:00:07: sweep",
        "100% 1k/1k samples, 0:00:27 elapsed, ETA 0:00:00: done",
    ]
    assert remaining(500, 1000, 200, 10.0) == 10.0 * 500 / 300 and remaining(200, 1000, 200, 5.0) is None
    assert [amount(v) for v in (987, 12345, 4.567e6, 2e9)] == ["987", "12.3k", "4.57M", "2G"]
