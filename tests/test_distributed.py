"""torchrun with 2 CPU processes (gloo): same results as one process, and a dead rank is survivable."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from processes import Hold

from nrs_cli.io.spec import load_spec
from nrs_cli.method.sigma import load_sigma
from nrs_cli.runs.certification import read_results
from nrs_cli.runs.optimization import read_metrics

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(*args, processes=2, wait=True, hold: Hold | None = None):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(processes),
        "-m",
        "nrs_cli",
        *map(str, args),
    ]
    if not wait:
        return subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**ENV, **(hold.env if hold else {})},
            start_new_session=True,
        )
    return subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=600)


def without_time(path):
    rows = read_results(path)
    for row in rows:
        row.pop("time")
        row.pop("crc32")  # covers the time
    return rows


def certify_args(trained_mini, out, n=100, stop=17):
    # --num-samples and --stop: torchrun's own parser would claim --n and --max as abbreviations
    return [
        "certify",
        "--checkpoint",
        trained_mini / "checkpoint.pt",
        "--sigma",
        0.3,
        "--n0",
        20,
        "--num-samples",
        n,
        "--stop",
        stop,
        "--out",
        out,
    ]


def test_distributed_certify_equals_one_process(run_cli, trained_mini, tmp_path):
    single = tmp_path / "single.tsv"
    assert run_cli(*certify_args(trained_mini, single)).code == 0
    merged = tmp_path / "merged.tsv"
    result = torchrun(*certify_args(trained_mini, merged))
    assert result.returncode == 0, result.stderr[-2000:]
    assert without_time(merged) == without_time(single)  # 17 inputs: ranks take 9 and 8
    assert len(read_results(tmp_path / "merged.shard0of2.tsv")) == 9
    assert len(read_results(tmp_path / "merged.shard1of2.tsv")) == 8
    assert result.stdout.count("certified accuracy") == 1  # only rank 0 speaks
    # the merged file resumes like a single-process one
    assert run_cli(*certify_args(trained_mini, merged)).code == 0
    assert without_time(merged) == without_time(single)


def test_distributed_sweep_matches_one_process(run_cli, trained_mini, tmp_path):
    args = [
        "optimize-sigma",
        "--checkpoint",
        trained_mini / "checkpoint.pt",
        "--inits",
        1,
        "--init",
        0.3,
        "--sub-epochs",
        2,
        "--steps",
        3,
        "--batch-size",
        16,
        "--n0",
        4,
        "--eval-max",
        20,
        "--eval-n0",
        8,
        "--eval-n",
        32,
        "--no-baseline",
    ]
    assert run_cli(*args, "--runs-dir", tmp_path / "one").code == 0
    result = torchrun(*args, "--runs-dir", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-2000:]
    spec = load_spec("mnist-mini")
    for name in ("init00-0.3_sub01.pt", "init00-0.3_sub02.pt"):
        one = load_sigma(tmp_path / "one/mnist-mini/optimize/sweep/sigmas" / name, spec).values
        two = load_sigma(tmp_path / "two/mnist-mini/optimize/sweep/sigmas" / name, spec).values
        assert torch.allclose(one, two, rtol=1e-4, atol=1e-6)
        assert not torch.equal(one, torch.full_like(one, 0.3))  # it did move
    rows = [read_metrics(tmp_path / d / "mnist-mini/optimize/sweep") for d in ("one", "two")]
    assert [r["accuracy"] for r in rows[0]] == [r["accuracy"] for r in rows[1]]


def test_distributed_cooptimisation_matches_one_process(run_cli, trained_mini, tmp_path):
    args = [
        "co-optimize", "--checkpoint", trained_mini / "checkpoint.pt", "--inits", 1, "--init", 0.3, "--rounds", 1,
        "--finetune-steps", 2, "--sigma-steps", 2, "--eval-max", 16, "--set", "optimize.batch_size=16",
        "--set", "optimize.n0=4", "--set", "cooptimize.finetune_batch_size=16", "--set", "optimize.eval_n=32",
    ]  # fmt: skip
    assert run_cli(*args, "--runs-dir", tmp_path / "one").code == 0
    result = torchrun(*args, "--runs-dir", tmp_path / "two")
    assert result.returncode == 0, result.stderr[-2000:]
    run = "mnist-mini/optimize/co"
    one = torch.load(tmp_path / "one" / run / "checkpoints/init00-0.3_round01.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "two" / run / "checkpoints/init00-0.3_round01.pt", weights_only=True)["state_dict"]
    # gradients summed over ranks; Adam divides each step by the gradient's own scale, so a weight whose
    # gradient is ~0 can move by float noise (seen: 4.5e-6); a missing all-reduce moves weights by ~lr = 5e-4
    assert all(torch.allclose(one[k], two[k], rtol=1e-4, atol=2e-5) for k in one)
    spec = load_spec("mnist-mini")
    sigma_one = load_sigma(tmp_path / "one" / run / "sigmas/init00-0.3_round01.pt", spec).values
    sigma_two = load_sigma(tmp_path / "two" / run / "sigmas/init00-0.3_round01.pt", spec).values
    assert torch.allclose(sigma_one, sigma_two, rtol=1e-4, atol=1e-6)


def worker_pids(launcher_pid):
    out = subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in out]


def test_a_killed_rank_fails_the_launch_readably_and_a_rerun_completes(run_cli, trained_mini, tmp_path):
    out = tmp_path / "killed.tsv"
    hold = Hold(tmp_path, "rows", 3)  # every rank holds after its third row: no shard can finish first
    launcher = torchrun(*certify_args(trained_mini, out, n=400, stop=60), wait=False, hold=hold)
    shard = tmp_path / "killed.shard1of2.tsv"
    deadline = time.time() + 300
    while not (shard.exists() and shard.read_text().count("\n") > 3):
        assert launcher.poll() is None and time.time() < deadline, launcher.communicate()[1][-2000:]
        time.sleep(0.1)
    workers = worker_pids(launcher.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)  # one rank dies without a word
    _, stderr = launcher.communicate(timeout=180)
    assert launcher.returncode != 0
    assert "failed" in stderr.lower() and "Signal 9" in stderr  # torchrun names the rank and the signal
    assert not out.exists() or len(read_results(out)) < 60  # nothing was merged from half-done shards
    result = torchrun(*certify_args(trained_mini, out, n=400, stop=60))
    assert result.returncode == 0, result.stderr[-2000:]
    single = tmp_path / "single.tsv"
    assert run_cli(*certify_args(trained_mini, single, n=400, stop=60)).code == 0
    assert without_time(out) == without_time(single)
