"""Faults and bad input: every expected failure is one `error:` line and exit code 2, nothing written is lost.

Concurrency, signals and kills are driven with real processes; the rest runs
the CLI in this process. Each case checks the exit code, that stderr is one
line starting with ``error:``, and that the files written before are intact
and resumable.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_cifar_batches, write_idx, write_image_folder, write_mnist_raw
from PIL import Image
from processes import NRS, Hold, start_nrs

from nrs_cli.errors import NrsError
from nrs_cli.io.folders import open_rgb
from nrs_cli.io.models import build_model, save_checkpoint
from nrs_cli.io.spec import load_spec
from nrs_cli.io.tables import sidecar
from nrs_cli.method.sigma import save_sigma
from nrs_cli.runs.certification import CERTIFY_SCHEMA, read_results

QUICK = ["--n0", 10, "--n", 60]
HELD = [*QUICK, "--chunk-size", 20]  # rows come two at a time, so a run held after k rows is held mid-table


def one_line_error(result, *parts: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], lines[0]


def rows_without_time(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("time", "crc32")} for row in read_results(path)]


def certify_args(trained_mini, out, *extra):
    return ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--out", out, "--sigma", 0.25, *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# 1. two writers, 7. SIGTERM, and kills at any moment: real processes


def test_a_second_writer_is_refused_naming_the_holder_and_the_first_finishes(run_cli, trained_mini, tmp_path):
    out = tmp_path / "shared.tsv"
    hold = Hold(tmp_path, "rows", 2)
    first = start_nrs(*certify_args(trained_mini, out, *HELD, "--max", 6), hold=hold)
    hold.wait(first)  # the first holds the output, rows written, whatever the machine's speed
    second = start_nrs(*certify_args(trained_mini, out, *HELD, "--max", 6))
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 2 and stderr.count("\n") == 1
    assert f"is being written by nrs process {first.pid}" in stderr
    hold.release()
    assert first.wait(timeout=300) == 0
    clean = tmp_path / "clean.tsv"
    assert run_cli(*certify_args(trained_mini, clean, *HELD, "--max", 6)).code == 0
    assert rows_without_time(out) == rows_without_time(clean)


def test_two_writers_started_together_leave_one_complete_table(trained_mini, tmp_path):
    out = tmp_path / "race.tsv"
    hold = Hold(tmp_path, "rows", 1)  # whichever takes the lock holds it until the other has been refused
    processes = [start_nrs(*certify_args(trained_mini, out, *HELD, "--max", 6), hold=hold) for _ in range(2)]
    deadline = time.time() + 300
    while all(p.poll() is None for p in processes):
        assert time.time() < deadline
        time.sleep(0.02)
    (refused,) = [p for p in processes if p.poll() is not None]
    assert refused.returncode == 2 and "is being written by nrs process" in refused.communicate()[1]
    hold.release()
    (writer,) = [p for p in processes if p is not refused]
    assert writer.wait(timeout=300) == 0
    assert [int(r["idx"]) for r in read_results(out)] == list(range(6))


def test_sigterm_is_one_line_exit_2_and_the_run_resumes_to_the_same_file(run_cli, trained_mini, tmp_path):
    out = tmp_path / "term.tsv"
    hold = Hold(tmp_path, "rows", 3)
    process = start_nrs(*certify_args(trained_mini, out, *HELD, "--max", 8), hold=hold)
    hold.wait(process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and stderr.startswith("error: terminated (SIGTERM)") and stderr.count("\n") == 1
    kept = read_results(out)
    assert 3 <= len(kept) < 8
    assert run_cli(*certify_args(trained_mini, out, *HELD, "--max", 8)).code == 0
    clean = tmp_path / "clean.tsv"
    assert run_cli(*certify_args(trained_mini, clean, *HELD, "--max", 8)).code == 0
    assert rows_without_time(out) == rows_without_time(clean) and read_results(out)[: len(kept)] == kept


def test_killed_at_any_moment_the_next_run_resumes_to_the_same_file(run_cli, trained_mini, tmp_path):
    """SIGKILL during start-up (whatever it had done by then), and held after 2 and after 6 rows: each
    rerun takes over the lock and resumes."""
    out = tmp_path / "killed.tsv"
    args = certify_args(trained_mini, out, *HELD, "--max", 12)
    for delay in (0.3, 1.5):  # held after its first rows: however fast the machine, the table is not done
        process = start_nrs(*args, hold=Hold(tmp_path, "rows", 0))
        time.sleep(delay)
        process.kill()
        process.wait()
    for rows in (2, 6):
        hold = Hold(tmp_path, "rows", rows)
        process = start_nrs(*args, hold=hold)
        hold.wait(process)
        process.kill()
        process.wait()
    assert len(read_results(out)) >= 6
    assert run_cli(*args).code == 0
    clean = tmp_path / "clean.tsv"
    assert run_cli(*certify_args(trained_mini, clean, *HELD, "--max", 12)).code == 0
    assert rows_without_time(out) == rows_without_time(clean)


# 6. what a kill between two writes leaves behind


def test_a_header_only_table_without_manifest_starts_over(run_cli, trained_mini, tmp_path):
    out = tmp_path / "header.tsv"
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 4)).code == 0
    rows = rows_without_time(out)
    out.write_text(out.read_text().splitlines()[0] + "\n")
    (tmp_path / "header.tsv.manifest.json").unlink()
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 4)).code == 0
    assert rows_without_time(out) == rows


def test_a_manifest_without_its_table_starts_over_and_rows_without_manifest_are_kept(run_cli, trained_mini, tmp_path):
    out = tmp_path / "t.tsv"
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 4)).code == 0
    rows = rows_without_time(out)
    out.unlink()  # as if killed after the manifest was written
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 4)).code == 0
    assert rows_without_time(out) == rows
    (tmp_path / "t.tsv.manifest.json").unlink()
    before = out.read_bytes()
    result = run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 4))
    one_line_error(result, "has rows but no t.tsv.manifest.json")
    assert out.read_bytes() == before


# 2. other data, 5. damaged rows


def test_resume_on_other_data_is_refused(run_cli, tmp_path):
    spec = load_spec("mnist")
    save_checkpoint(tmp_path / "m.pt", build_model(spec), spec, "mnist_cnn")
    write_mnist_raw(tmp_path / "a", train=12, test=8, seed=0)
    write_mnist_raw(tmp_path / "b", train=12, test=8, seed=1)  # other images, same layout
    args = ["certify", "--dataset", "mnist", "--checkpoint", tmp_path / "m.pt", "--sigma", 0.25, *QUICK]
    out = tmp_path / "r.tsv"
    assert run_cli(*args, "--max", 4, "--data-root", tmp_path / "a", "--out", out).code == 0
    before = out.read_bytes()
    result = run_cli(*args, "--max", 8, "--data-root", tmp_path / "b", "--out", out)
    one_line_error(result, "different inputs_sha256")
    assert out.read_bytes() == before
    assert run_cli(*args, "--max", 8, "--data-root", tmp_path / "a", "--out", out).code == 0  # same data extends it


def test_a_damaged_row_is_refused_with_its_line_on_resume_and_in_plots(run_cli, trained_mini, tmp_path):
    out = tmp_path / "d.tsv"
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 5)).code == 0
    lines = out.read_text().splitlines()
    cells = lines[3].split("\t")
    cells[2] = "9" if cells[2] != "9" else "8"  # a complete row with a valid idx and another prediction
    out.write_text("\n".join(lines[:3] + ["\t".join(cells)] + lines[4:]) + "\n")
    before = out.read_bytes()
    for args in (
        certify_args(trained_mini, out, *QUICK, "--max", 5),
        ["plot", "table", out],
        ["plot", "certified-accuracy", out, "--out", tmp_path / "fig"],
    ):
        one_line_error(run_cli(*args), "d.tsv line 4")
    out.write_bytes(before.replace(b"\n", b"\n\x00\xff garbage\n", 1))
    one_line_error(run_cli("plot", "table", out), "d.tsv line 2")
    assert not (tmp_path / "fig.png").exists()


def test_damaged_manifests_and_states_are_one_line_errors(run_cli, trained_mini, tmp_path, monkeypatch):
    out = tmp_path / "m.tsv"
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 3)).code == 0
    manifest = tmp_path / "m.tsv.manifest.json"
    for text, message in (('{"fingerprint": ', "damaged or truncated"), ("[1, 2]", "not the JSON object")):
        manifest.write_text(text)
        one_line_error(run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 3)), message)
        one_line_error(run_cli("plot", "table", out), message)
    manifest.write_text('{"fingerprint": 5, "sigma": [], "resumed": "x"}')
    one_line_error(
        run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 3)), "nothing records what it was made with"
    )
    assert run_cli("plot", "table", out).code == 0  # a manifest only labels a plot
    monkeypatch.chdir(tmp_path)
    shutil.copytree(trained_mini, tmp_path / "runs" / "mnist-mini" / "base")
    sweep = ["optimize-sigma", "--inits", 1, "--sub-epochs", 1, "--steps", 1, "--eval-max", 4]
    assert run_cli(*sweep).code == 0
    state = tmp_path / "runs" / "mnist-mini" / "optimize" / "sweep" / "state.pt"
    torch.save({"rows": 3}, state)
    one_line_error(run_cli(*sweep), "state.pt is not the state of this kind of run")


# 3. sigma after conversion, 8/9. bad metadata and bad options


def test_sigma_files_are_checked_in_float32(run_cli, trained_mini, tmp_path):
    spec = load_spec("mnist-mini")
    cases = {
        "tiny.pt": (torch.full((1, 28, 28), 1e-300, dtype=torch.float64), "784 values <= 0"),
        "huge.pt": (torch.full((1, 28, 28), 1e300, dtype=torch.float64), "784 non-finite values in float32"),
        "sparse.pt": (torch.full((1, 28, 28), 0.3).to_sparse(), "must be a dense tensor"),
    }
    for name, (values, message) in cases.items():
        torch.save({"sigma": values}, tmp_path / name)
        result = run_cli("certify", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", tmp_path / name)
        one_line_error(result, message)
    save_sigma(tmp_path / "odd.pt", torch.full((1, 28, 28), 0.3), spec, extra=torch.ones(2), note={1, 2})
    out = tmp_path / "odd.tsv"
    args = ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", tmp_path / "odd.pt", "--out", out]
    assert run_cli(*args, *QUICK, "--max", 2).code == 0
    manifest = json.loads((tmp_path / "odd.tsv.manifest.json").read_text())  # strict JSON: no NaN, no tensors
    assert manifest["sigma"]["extra"].startswith("tensor(")


def checkpoint_with(tmp_path, name, change):
    spec = load_spec("mnist-mini")
    save_checkpoint(tmp_path / "base.pt", build_model(spec), spec, "mnist_cnn")
    payload = torch.load(tmp_path / "base.pt", weights_only=True)
    payload.pop("content_sha256")  # as a checkpoint from elsewhere: no digest to catch the change
    change(payload)
    torch.save(payload, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda p: p["state_dict"].update({7: torch.zeros(1)}), "not a named tensor"),
        (lambda p: p.update(input_shape=5), "which does not match mnist-mini"),
        (lambda p: p.pop("mean"), "mean and std must be lists of 1 numbers"),
        (lambda p: p.update(mean=5), "mean and std must be lists of 1 numbers"),
        (lambda p: p.update(std=["wide"]), "mean and std must be lists of 1 numbers"),
        (lambda p: p.update(std=[0.0]), "its std must be numbers from 1e-6 to 1e6"),
        (lambda p: p["state_dict"]["1.fc2.bias"].fill_(float("nan")), "not finite"),
        (lambda p: p.update(std=[1e-30]), "its std must be numbers from 1e-6 to 1e6"),  # certified 0% before
        (lambda p: p.update(std=[1e30]), "its std must be numbers from 1e-6 to 1e6"),
        (lambda p: p.update(mean=[1e30]), "its mean must be finite numbers from -1e6 to 1e6"),
        (lambda p: p.update(mean=[float("nan")]), "its mean must be finite numbers from -1e6 to 1e6"),
    ],
)
def test_checkpoint_metadata_is_typed_and_checked(run_cli, tmp_path, change, message):
    path = checkpoint_with(tmp_path, "bad.pt", change)
    one_line_error(run_cli("certify", "--checkpoint", path, "--sigma", 0.25, "--max", 1), message)


def test_a_changed_nrs_checkpoint_is_refused_by_its_digest(run_cli, trained_mini, tmp_path):
    payload = torch.load(trained_mini / "checkpoint.pt", weights_only=True)
    payload["std"] = [0.5]
    torch.save(payload, tmp_path / "edited.pt")
    one_line_error(run_cli("certify", "--checkpoint", tmp_path / "edited.pt", "--sigma", 0.25), "is damaged")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train-base", "--batch-size", 0], "train.batch_size: expected a batch size from 1 to 2^24"),
        (["train-base", "--lr", -1], "train.lr: expected a positive learning rate"),
        (["train-base", "--epochs", -1], "train.epochs: expected 0 or more"),
        (["train-base", "--set", "data.mean=[0.1, 0.2]"], "data.mean and data.std need one value per channel"),
        (["train-base", "--set", "name=../../x"], "name: expected up to 100 letters, digits"),
        (["train-base", "--seed", 2**64], "seed: expected an integer from 0 to 2^63 - 1"),
        (["plot", "table", "x.tsv", "--axis", "all"], "unknown axis 'all'"),
        (["visualize-sigma", "s.pt", "--columns", -1], "--columns"),
        (["certify", "--sigma", 0.25, "--batch", -5], "engine.chunk_size"),
        (["predict", "--sigma", 0.25, "--max", -5], "certify.max: expected -1 (all) or a count"),
        # 1e20 (an integer of 21 digits, as a user pastes it) for every count, size and rate
        (["certify", "--sigma", 0.25, "--n", 10**20], "certify.n: expected a number of samples from 1 to 10^12"),
        (["certify", "--sigma", 0.25, "--n0", 10**20], "certify.n0: expected a number of samples"),
        (["certify", "--sigma", 0.25, "--chunk-size", 10**20], "engine.chunk_size: expected 0 (chosen per device)"),
        (["certify", "--sigma", 0.25, "--skip", 10**20], "certify.skip: expected a count from 1 to 2^62"),
        (["predict", "--sigma", 1e20], "sigma has 784 values outside [1e-06, 1000] pixel units"),
        (["optimize-sigma", "--batch-size", 10**20], "optimize.batch_size: expected a batch size from 1 to 2^24"),
        (["optimize-sigma", "--inits", 10**20], "optimize.inits: expected from 1 to 10^4 constants"),
        (["optimize-sigma", "--n0", 10**20], "optimize.n0: expected a number of noise samples per input"),
        (["optimize-sigma", "--eval-n", 10**20], "optimize.eval_n: expected a number of samples"),
        (["optimize-sigma", "--lr", 1e20], "optimize.lr: expected a positive learning rate, at most 10, got 1e+20"),
        (["optimize-sigma", "--lr-decay", 1e20], "optimize.lr_decay: expected a positive factor, at most 10"),
        (["optimize-sigma", "--init", float("nan")], "optimize.init: expected a sigma from 1e-06 to 1000"),
        (["optimize-sigma", "--init-step", float("inf")], "optimize.init_step: expected a step of sigma"),
        (["co-optimize", "--set", f"cooptimize.finetune_batch_size={10**20}"], "cooptimize.finetune_batch_size"),
        (["co-optimize", "--finetune-lr", 1e20], "cooptimize.finetune_lr: expected a positive learning rate"),
        (["co-optimize", "--set", "cooptimize.lr_decay=1.0e+20"], "cooptimize.lr_decay: expected a positive factor"),
        (["co-optimize", "--rounds", 10**20], "cooptimize.rounds: expected a count from 1 to 10^6"),
        (["train-base", "--set", f"data.num_classes={10**20}"], "data.num_classes: expected from 2 to 10^6 classes"),
        (["train-base", "--set", "data.input_shape=[1, 100000, 100000]"], "data.input_shape: expected [channels"),
        (["train-base", "--set", "train.lr_gamma=1.0e+20"], "train.lr_gamma: expected a positive factor"),
        (["train-base", "--set", "train.weight_decay=.inf"], "train.weight_decay: expected 0 or more, at most 10"),
        (["train-base", "--set", "data.std=[1.0e-30]"], "data.std: expected numbers from 1e-6 to 1e6"),
        (["train-base", "--set", f"data.workers={10**20}"], "data.workers: expected 0 to 1024"),
        (["train-base", "--train-size", 10**20], "data.train_size: expected null or a count from 1 to 2^62"),
        (["train-base", "--set", "name=" + "n" * 101], "name: expected up to 100 letters"),
        (
            ["compare", "--set", "compare.cooptimize_inits=[0.25, 0.5, 1.0]"],
            "compare.cooptimize_inits: expected equally",
        ),
        (["compare", "--set", "compare.cooptimize_from=0.3"], "compare.cooptimize_from: expected one of"),
        (["figures", "--set", "figures.sigmas=100000000000000000000"], "figures.sigmas: expected from 1 to 100"),
    ],
)
def test_bad_options_are_one_line_errors(run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    one_line_error(run_cli(*args), message)


def test_spec_files_that_are_not_utf8_or_bomb_with_aliases(run_cli, tmp_path):
    (tmp_path / "latin.yaml").write_bytes("extends: mnist-mini\ndescription: caf\xe9\n".encode("latin-1"))
    one_line_error(run_cli("train-base", "--dataset", tmp_path / "latin.yaml"), "must be UTF-8 text")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")
    )
    (tmp_path / "bomb.yaml").write_text(bomb)
    started = time.perf_counter()
    result = run_cli("train-base", "--dataset", tmp_path / "bomb.yaml")
    one_line_error(result, "aliases (*name) are not allowed")
    assert len(result.stderr) < 300 and time.perf_counter() - started < 5


def test_damaged_data_files_are_one_line_errors(run_cli, tmp_path):
    write_mnist_raw(tmp_path, train=12, test=6)
    raw = tmp_path / "MNIST" / "raw"
    args = ["train-base", "--dataset", "mnist", "--data-root", tmp_path, "--epochs", 1, "--runs-dir", tmp_path / "r"]
    (raw / "t10k-images-idx3-ubyte").write_bytes((raw / "t10k-images-idx3-ubyte").read_bytes()[:1000])
    one_line_error(run_cli(*args), "damaged or truncated")
    write_mnist_raw(tmp_path, train=12, test=6)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))  # 6 images, 5 labels
    one_line_error(run_cli(*args), "damaged or truncated")
    write_mnist_raw(tmp_path, train=12, test=6)
    write_idx(raw / "train-labels-idx1-ubyte", np.full(12, 12, dtype=np.uint8))  # class 12 of 10
    one_line_error(run_cli(*args), "labels run from 12 to 12, but the spec has 10 classes")


def test_unwritable_outputs_are_one_line_errors_and_a_full_disk_keeps_the_table(
    run_cli, trained_mini, tmp_path, monkeypatch
):
    (tmp_path / "file").write_text("not a folder")
    one_line_error(run_cli(*certify_args(trained_mini, tmp_path / "file" / "x.tsv", *QUICK)), "cannot access")
    one_line_error(run_cli(*certify_args(trained_mini, Path("/proc/nrs.tsv"), *QUICK)), "cannot access")
    out = tmp_path / "full.tsv"
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 3)).code == 0
    before = snapshot(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out))

    monkeypatch.setattr("nrs_cli.io.serialization._atomic_write", no_space)
    one_line_error(run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 6)), "No space left on device")
    assert snapshot(tmp_path) == before


# 4. train-base keeps the previous run until a new epoch is done, and resumes


def test_train_base_resumes_exactly_and_a_failed_rerun_keeps_the_run(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["train-base", "--train-size", 2048, "--set", "train.batch_size=64", "--epochs", 3]
    assert run_cli(*args, "--name", "whole").code == 0
    hold = Hold(tmp_path, "epochs", 1)
    process = start_nrs(*args, "--name", "cut", cwd=tmp_path, hold=hold)
    metrics = tmp_path / "runs" / "mnist-mini" / "cut" / "metrics.csv"
    hold.wait(process)  # epoch 1 saved, epochs 2 and 3 to come
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and stderr.startswith("error: interrupted") and stderr.count("\n") == 1
    kept = snapshot(tmp_path / "runs" / "mnist-mini" / "cut")
    one_line_error(run_cli(*args, "--name", "cut", "--lr", 0.5), "different train.lr (0.001 → 0.5)")
    assert snapshot(tmp_path / "runs" / "mnist-mini" / "cut") == kept
    resumed = run_cli(*args, "--name", "cut")
    assert resumed.code == 0 and "resumed after epoch" in resumed.stdout
    whole = torch.load(tmp_path / "runs/mnist-mini/whole/checkpoint.pt", weights_only=True)["state_dict"]
    cut = torch.load(tmp_path / "runs/mnist-mini/cut/checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(whole[key], cut[key]) for key in whole)
    whole_metrics = (metrics.parents[1] / "whole" / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[:5] for line in metrics.read_text().splitlines()] == [
        line.split(",")[:5] for line in whole_metrics
    ]


# Second round: links, foreign files, side-cars, limits, edited tables, other networks' sweeps


def test_a_lock_file_that_is_a_link_is_refused_and_what_it_points_to_is_kept(run_cli, trained_mini, tmp_path):
    victim = tmp_path / "someone-elses.txt"
    victim.write_text("results of a colleague\n")
    out = tmp_path / "s.tsv"
    (tmp_path / "s.tsv.lock").symlink_to(victim)
    one_line_error(run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 2)), "s.tsv.lock: it is a symbolic link")
    (tmp_path / "s.tsv.lock").unlink()
    os.link(victim, tmp_path / "s.tsv.lock")  # another name of the colleague's file
    one_line_error(run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 2)), "not a plain file of its own")
    runs = tmp_path / "runs" / "mnist-mini"
    for args, run in (
        (["optimize-sigma", "--checkpoint", trained_mini / "checkpoint.pt"], runs / "optimize" / "sweep"),
        (["train-base"], runs / "base"),
    ):
        run.mkdir(parents=True)
        (run / ".lock").symlink_to(victim)
        one_line_error(run_cli(*args, "--runs-dir", tmp_path / "runs"), ".lock: it is a symbolic link")
    assert victim.read_text() == "results of a colleague\n" and not out.exists()
    table = tmp_path / "t.tsv"  # side-cars and figures are replaced, not written through a link
    for link in (sidecar(table, "manifest"), sidecar(table, "summary"), tmp_path / "f.png"):
        link.symlink_to(victim)
    assert run_cli(*certify_args(trained_mini, table, *QUICK, "--max", 2)).code == 0
    assert run_cli("plot", "certified-accuracy", table, "--axis", "radius", "--out", tmp_path / "f").code == 0
    assert victim.read_text() == "results of a colleague\n" and not (tmp_path / "f.png").is_symlink()


def test_an_existing_file_that_is_not_a_table_of_the_kind_is_refused_unless_forced(run_cli, trained_mini, tmp_path):
    notes, draft = tmp_path / "notes.txt", tmp_path / "draft"
    notes.write_text("remember: sigma 0.25 looked best\n")
    draft.write_bytes(b"no newline at the end")
    for path in (notes, draft):
        before = path.read_bytes()
        for command in ("certify", "predict"):
            args = [command, "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", 0.25, "--out", path]
            one_line_error(
                run_cli(*args, "--n", 60, "--max", 2), f"refusing to overwrite {path}: it is not a {command}"
            )
        assert path.read_bytes() == before and not sidecar(path, "manifest").exists()
    certified = tmp_path / "c.tsv"
    assert run_cli(*certify_args(trained_mini, certified, *QUICK, "--max", 2)).code == 0
    predict = ["predict", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", 0.25, "--n", 60, "--max", 2]
    one_line_error(run_cli(*predict, "--out", certified), "it is not a predict table")
    assert run_cli(*certify_args(trained_mini, notes, *QUICK, "--max", 2), "--force").code == 0
    assert [row["idx"] for row in read_results(notes)] == ["0", "1"]


def test_outputs_that_differ_only_after_the_last_dot_keep_their_own_side_cars(run_cli, trained_mini, tmp_path):
    """r.tsv / r.txt and cert.s0.25 / cert.s0.5 shared one manifest and summary: the second overwrote the first's,
    the plots labelled the first with the second's sigma and the first could no longer be extended."""
    for first, second in (("r.tsv", "r.txt"), ("cert.s0.25", "cert.s0.5")):
        outputs = {tmp_path / first: 0.25, tmp_path / second: 0.5}
        for out, sigma in outputs.items():
            args = ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", sigma, "--out", out]
            assert run_cli(*args, *QUICK, "--max", 2).code == 0
        for out, sigma in outputs.items():
            assert json.loads(sidecar(out, "manifest").read_text())["sigma"]["init"] == sigma
            assert json.loads(sidecar(out, "summary").read_text())["sigma"] == f"{sigma:g}"
            table = run_cli("plot", "table", out, "--axis", "radius", "--at", "0")
            assert table.code == 0 and f"isotropic, σ = {sigma:g}" in table.stdout
            args = ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", sigma, "--out", out]
            assert run_cli(*args, *QUICK, "--max", 4).code == 0  # each extends its own
            assert len(read_results(out)) == 4


def test_a_table_with_side_cars_named_as_before_resumes_and_is_labelled(run_cli, trained_mini, tmp_path):
    out = tmp_path / "old.tsv"
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 2)).code == 0
    for kind in ("manifest", "summary"):
        sidecar(out, kind).rename(tmp_path / f"old.{kind}.json")  # as an earlier nrs named them
    table = run_cli("plot", "table", out, "--axis", "radius", "--at", "0")
    assert table.code == 0 and "isotropic, σ = 0.25" in table.stdout
    assert run_cli(*certify_args(trained_mini, out, *QUICK, "--max", 4)).code == 0
    assert json.loads(sidecar(out, "manifest").read_text())["resumed"] and len(read_results(out)) == 4


def test_two_outputs_with_one_stem_are_written_at_once_each_with_its_own_side_cars(run_cli, trained_mini, tmp_path):
    holds, processes = {}, {}
    for name, sigma in (("r.tsv", 0.25), ("r.txt", 0.5)):
        holds[name] = Hold(tmp_path, "rows", 2)
        args = ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", sigma, "--out", tmp_path / name]
        processes[name] = start_nrs(*args, *HELD, "--max", 6, hold=holds[name])
    for name in processes:
        holds[name].wait(*processes.values())  # both hold their output at once: neither locks the other out
    for name in processes:
        holds[name].release()
        assert processes[name].wait(timeout=300) == 0, processes[name].communicate()
    for name, sigma in (("r.tsv", 0.25), ("r.txt", 0.5)):
        assert json.loads(sidecar(tmp_path / name, "manifest").read_text())["sigma"]["init"] == sigma
        clean = tmp_path / f"clean-{name}"
        args = ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--sigma", sigma, "--out", clean]
        assert run_cli(*args, *HELD, "--max", 6).code == 0
        assert rows_without_time(tmp_path / name) == rows_without_time(clean)


def test_one_table_under_two_names_has_one_writer(run_cli, trained_mini, tmp_path):
    out = tmp_path / "out.tsv"
    assert run_cli(*certify_args(trained_mini, out, *HELD, "--max", 2)).code == 0
    (tmp_path / "link.tsv").symlink_to(out)
    os.link(out, tmp_path / "hard.tsv")  # the same file under a second name
    hold = Hold(tmp_path, "rows", 4)
    first = start_nrs(*certify_args(trained_mini, out, *HELD, "--max", 8), hold=hold)
    hold.wait(first)
    for alias, message in (("link.tsv", f"nrs process {first.pid}"), ("hard.tsv", f"process {first.pid} under")):
        second = start_nrs(*certify_args(trained_mini, tmp_path / alias, *HELD, "--max", 8))
        _, stderr = second.communicate(timeout=300)
        assert second.returncode == 2 and stderr.count("\n") == 1 and message in stderr, stderr
    hold.release()
    assert first.wait(timeout=300) == 0
    assert [int(row["idx"]) for row in read_results(out)] == list(range(8))  # no row twice
    assert (tmp_path / "hard.tsv").read_bytes() == out.read_bytes()


def edited(path: Path, line: int, change) -> None:
    """Change the cells of one line of a certify table and give it the checksum of its new cells, as a careful
    editor would (a checksum is no signature: only the certificate's own consistency can tell)."""
    lines = path.read_text().splitlines()
    cells = dict(zip(CERTIFY_SCHEMA.header, lines[line - 1].split("\t")))
    change(cells)
    lines[line - 1] = CERTIFY_SCHEMA.line(cells).rstrip("\n")
    path.write_text("\n".join(lines) + "\n")


def test_edited_result_tables_are_refused_with_file_and_line(run_cli, tmp_path):
    """An untrained network: its certified predictions are mostly wrong, the case an editor would flip."""
    spec = load_spec("mnist-mini")
    save_checkpoint(tmp_path / "untrained.pt", build_model(spec), spec, "mnist_cnn")
    out = tmp_path / "e.tsv"
    args = ["certify", "--checkpoint", tmp_path / "untrained.pt", "--sigma", 0.25, "--out", out, *QUICK, "--max", 8]
    assert run_cli(*args).code == 0
    rows = read_results(out)
    wrong = next(n for n, row in enumerate(rows, 2) if row["correct"] == "0" and row["predict"] != "-1")
    pristine = {p.name: p.read_bytes() for p in tmp_path.glob("e.tsv*")}
    radius_times_10 = (wrong, lambda c: c.update(radius=f"{float(c['radius']) * 10:.10g}"))
    cases = [
        (*radius_times_10, f"line {wrong}: radius"),
        (wrong, lambda c: c.update(correct="1"), f"line {wrong}: correct is 1 for predict"),
        (wrong, lambda c: c.update(predict=c["label"], correct="1"), "rows have 1 inputs correct, but e.tsv.summary"),
        (wrong, lambda c: c.update(pA_lower="0.999"), f"line {wrong}: icdf"),
        (wrong, lambda c: c.update(predict="-1", correct="0"), f"line {wrong}: an abstention"),
    ]
    for line, change, message in cases:
        edited(out, line, change)
        before = out.read_bytes()
        for command in (["plot", "table", out], ["plot", "certified-accuracy", out, "--out", tmp_path / "f"], args):
            one_line_error(run_cli(*command), message)
        assert out.read_bytes() == before and not list(tmp_path.glob("f*"))
        for name, data in pristine.items():
            (tmp_path / name).write_bytes(data)
    lines = out.read_text().splitlines(keepends=True)
    for changed, message in (
        (lines[:4] + lines[3:], "line 5: input 2 again (first on line 4)"),
        (lines[:3] + lines[4:], "line 4: input 3 where input 2 is due (a row is missing)"),
        (lines[:3] + [lines[4], lines[3]] + lines[5:], "line 5: input 2 after input 3 (out of order)"),
    ):
        out.write_text("".join(changed))
        one_line_error(run_cli("plot", "table", out), message)
    sidecar(out, "manifest").unlink()  # alone, a table still has to hold together
    out.write_bytes(pristine["e.tsv"])
    edited(out, wrong, radius_times_10[1])
    one_line_error(run_cli("plot", "table", out), f"line {wrong}: radius", "exceeds gm_radius")
    out.write_bytes(pristine["e.tsv"])
    last = max(n for n, row in enumerate(rows, 2) if row["predict"] != "-1")
    edited(out, last, lambda c: c.update(radius=f"{float(c['radius']) / 2:.10g}"))
    one_line_error(run_cli("plot", "table", out), f"line {last}: radius / icdf is")


def test_a_default_sigma_comes_only_from_a_sweep_of_the_same_network(run_cli, trained_mini, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "mnist-mini"
    shutil.copytree(trained_mini, runs / "base")
    spec = load_spec("mnist-mini")
    save_checkpoint(tmp_path / "other.pt", build_model(spec), spec, "mnist_cnn")
    small = ["--inits", 1, "--eval-max", 4, "--set", "optimize.eval_n=64"]
    sweep = ["optimize-sigma", *small, "--sub-epochs", 1, "--steps", 1]
    assert run_cli(*sweep, "--checkpoint", tmp_path / "other.pt", "--name", "theirs").code == 0
    co = ["co-optimize", *small, "--rounds", 1, "--finetune-steps", 1, "--sigma-steps", 0, "--name", "co"]
    assert run_cli(*co).code == 0
    unchanged = torch.load(runs / "optimize/co/sigmas/init00-0.1_round01.pt", weights_only=True)["sigma"]
    assert torch.allclose(unchanged, torch.full((1, 28, 28), 0.1), rtol=1e-6)  # sigma_steps 0: no step taken
    certify = ["certify", *QUICK, "--max", 2, "--out", tmp_path / "d.tsv"]
    one_line_error(
        run_cli(*certify), f"no sweep of runs/mnist-mini/base/checkpoint.pt: the sweeps theirs (for {tmp_path}"
    )
    assert run_cli(*sweep, "--name", "mine").code == 0
    result = run_cli(*certify)
    assert (
        result.code == 0
        and "the best point of the latest sweep of this network (runs/mnist-mini/optimize/mine)" in (result.stdout)
    )


LIMITED = """
import resource, sys
import torch, nrs_cli.cli  # what every command loads, before the limit
size = int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmSize:"))) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 2**31, size + 2**31))
from nrs_cli.cli import main
sys.argv[0] = "nrs"  # as the manifest records the command
main(sys.argv[1:])
"""


def with_memory_limit(*args, cwd: Path) -> subprocess.CompletedProcess:
    """``nrs ARGS`` in a process that may take 2 GiB of address space beyond what loading nrs took (``ulimit -v``,
    set by the process itself once loaded, so the limit means the same whatever the libraries map)."""
    command = [sys.executable, "-c", LIMITED, *map(str, args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_memory_running_out_is_one_line_naming_what_to_lower_and_keeps_the_table(trained_mini, tmp_path):
    out = tmp_path / "m.tsv"
    shutil.copytree(trained_mini, tmp_path / "runs" / "mnist-mini" / "base")
    certify = ["certify", "--sigma", 0.25, *QUICK, "--out", out]
    assert subprocess.run([str(NRS), *map(str, certify), "--max", "2"], cwd=tmp_path).returncode == 0
    before = out.read_bytes()
    # all 1000 test inputs in one group of forward passes: gigabytes of activations
    result = with_memory_limit(*certify, "--max", 1000, "--chunk-size", 2_000_000, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: CPU memory ran out") and "lower --chunk-size" in result.stderr
    assert out.read_bytes() == before
    sweep = ["optimize-sigma", "--inits", 1, "--sub-epochs", 1, "--steps", 1, "--eval-max", 2]
    result = with_memory_limit(*sweep, "--batch-size", 4096, "--n0", 256, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "memory ran out" in result.stderr and "lower --chunk-size, --batch-size or --n0" in result.stderr


@pytest.mark.parametrize(
    "failure, message",
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79 GiB total)"), "GPU"),
        (
            RuntimeError(
                "[enforce fail] DefaultCPUAllocator: not enough memory: you tried to allocate 4294967296 bytes"
            ),
            "CPU",
        ),
        (MemoryError(), "CPU"),
    ],
)
def test_every_kind_of_allocation_failure_is_the_same_one_line(
    run_cli, trained_mini, tmp_path, monkeypatch, failure, message
):
    def allocate(*args, **kwargs):
        raise failure

    monkeypatch.setattr("nrs_cli.runs.certification.certify_table", allocate)
    result = run_cli(*certify_args(trained_mini, tmp_path / "x.tsv", *QUICK))
    one_line_error(result, f"{message} memory ran out", "lower --chunk-size; everything written so far is kept")
    assert "GiB" in result.stderr or isinstance(failure, MemoryError)


def test_any_other_runtime_error_is_a_bug_with_its_traceback(run_cli, trained_mini, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("shape mismatch in layer fc2")

    monkeypatch.setattr("nrs_cli.runs.certification.certify_table", broken)
    result = run_cli(*certify_args(trained_mini, tmp_path / "x.tsv", *QUICK))
    assert result.code == 1 and "Traceback" in result.stderr and "a bug in nrs" in result.stderr


def with_file_size_limit(limit: int):
    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limited


def test_a_file_size_limit_is_one_line_and_leaves_no_temporary_files(tmp_path):
    """`ulimit -f` (or a full disk) while writing train_state.pt or a co-optimisation checkpoint: one line, and no
    hidden temporary file left behind to grow with every retry."""
    train = [str(NRS), "train-base", "--epochs", 1, "--train-size", 256, "--name", "t"]
    co = [str(NRS), "co-optimize", "--inits", 1, "--rounds", 1, "--finetune-steps", 1, "--sigma-steps", 1]
    co += ["--eval-max", 2, "--set", "optimize.eval_n=64", "--checkpoint", tmp_path / "runs/mnist-mini/t/checkpoint.pt"]
    for _ in range(2):  # a retry leaves nothing behind either
        result = subprocess.run(
            list(map(str, train)), cwd=tmp_path, capture_output=True, text=True, preexec_fn=with_file_size_limit(2**20)
        )
        assert result.returncode == 2 and result.stderr.startswith("error: cannot access"), result.stderr
        assert "train_state.pt: File too large" in result.stderr and result.stderr.count("\n") == 1
        assert not [p for p in (tmp_path / "runs").rglob(".*") if p.name != ".lock"]
    assert subprocess.run(list(map(str, train)), cwd=tmp_path, capture_output=True).returncode == 0
    result = subprocess.run(
        list(map(str, co)), cwd=tmp_path, capture_output=True, text=True, preexec_fn=with_file_size_limit(2**20)
    )
    assert result.returncode == 2 and "round01.pt: File too large" in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and not [p for p in (tmp_path / "runs").rglob(".*") if p.name != ".lock"]


def test_error_lines_stay_one_line_whatever_a_path_holds(run_cli, trained_mini, tmp_path):
    odd = tmp_path / "a\nb\tc\x1b[31m"
    odd.write_text("a file, not a folder")
    result = run_cli(*certify_args(trained_mini, odd / "r.tsv", *QUICK, "--max", 1))
    one_line_error(result, "a\\nb\\tc\\x1b[31m")
    one_line_error(
        run_cli("train-base", "--dataset", tmp_path / "x\ny.yaml"), "no such image folder or spec file", "x\\ny.yaml"
    )
    one_line_error(run_cli("plot", "table", tmp_path / "no\nsuch.tsv"), "no\\nsuch.tsv")


def test_more_ctrl_c_during_cleanup_add_nothing_to_the_one_line_and_the_cleanup_finishes(trained_mini, tmp_path):
    out = tmp_path / "c.tsv"
    rows, cleanup = Hold(tmp_path, "rows", 2), Hold(tmp_path, "cleanup", 1)
    process = start_nrs(*certify_args(trained_mini, out, *HELD, "--max", 8), hold=[rows, cleanup])
    rows.wait(process)
    process.send_signal(signal.SIGINT)
    cleanup.wait(process)  # the first Ctrl-C is being handled: the output's lock is being given up
    for _ in range(2):
        process.send_signal(signal.SIGINT)
    time.sleep(0.5)  # time to handle them while still held (on a busy machine they may land later: still cleanup)
    cleanup.release()
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and stderr.startswith("error: interrupted") and stderr.count("\n") == 1, stderr
    assert len(read_results(out)) >= 2
    assert not out.with_name(out.name + ".lock").exists()  # the cleanup was not cut short


def test_a_deep_extends_chain_and_deep_yaml_are_one_line_errors(run_cli, tmp_path):
    (tmp_path / "spec0.yaml").write_text("extends: mnist-mini\n")
    for k in range(1, 1200):
        (tmp_path / f"spec{k}.yaml").write_text(f"extends: spec{k - 1}.yaml\n")
    one_line_error(run_cli("train-base", "--dataset", tmp_path / "spec1199.yaml"), "deeper than 32 specs")
    (tmp_path / "deep.yaml").write_text("description: " + "[" * 5000 + "]" * 5000 + "\n")
    one_line_error(run_cli("train-base", "--dataset", tmp_path / "deep.yaml"), "nested too deeply")


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header for an image of ``width`` x ``height`` with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_in_an_image_folder_is_one_line(run_cli, tmp_path):
    write_image_folder(tmp_path / "imgs" / "train", ["a", "b"], 2, (28, 28))
    write_image_folder(tmp_path / "imgs" / "test", ["a", "b"], 2, (28, 28))
    (tmp_path / "imgs" / "train" / "a" / "0000.png").write_bytes(png_claiming(60000, 60000))
    spec = tmp_path / "folder.yaml"
    spec.write_text("extends: mnist-mini\ndata: {loader: imagefolder, folder: imgs, num_classes: 2, resize: 28}\n")
    one_line_error(run_cli("train-base", "--dataset", spec, "--data-root", tmp_path), "a decompression bomb?")


def test_a_decompression_bomb_among_the_images_a_folder_spec_samples_is_one_line(run_cli, tmp_path):
    write_image_folder(tmp_path / "imgs", ["a", "b"], 2, (28, 28))
    (tmp_path / "imgs" / "a" / "0000.png").write_bytes(png_claiming(60000, 60000))
    result = run_cli("train-base", "--dataset", tmp_path / "imgs")  # its input shape is read from the images
    one_line_error(result, "0000.png: the image is larger than", "a decompression bomb?")


def test_nrs_reads_images_under_its_own_pixel_limit_and_leaves_the_callers(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_claiming(60000, 60000))
    Image.fromarray(np.zeros((300, 300, 3), dtype=np.uint8)).save(tmp_path / "plain.png")
    for callers_limit in (None, 1000):  # PIL's check off, or stricter than nrs's
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", callers_limit)
        with pytest.raises(NrsError, match="larger than 134,217,728 pixels"):
            open_rgb(tmp_path / "bomb.png", "bomb.png")
        assert open_rgb(tmp_path / "plain.png", "plain.png").size == (300, 300)
        assert Image.MAX_IMAGE_PIXELS == callers_limit


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda b: b.update(data=[1, 2, 3]), "not N x 3072 pixel values"),
        (lambda b: b.update(data="pixels"), "not N x 3072 pixel values"),
        (lambda b: b.update(data=[[1, 2], [3]], labels=[0, 1]), "ragged, not N x 3072 pixel values"),
        (lambda b: b.update(labels=[[0], [1, 2], [3], [4]]), "ragged, not N x 3072 pixel values and N labels"),
        (lambda b: b.update(labels=["cat"] * 4), "not 4 whole numbers"),
        (lambda b: b.pop("labels"), "expected a dict with 'data' and 'labels'"),
        (lambda b: b.update(data=b["data"].astype(np.float64) * 4000), "pixels must be whole numbers from 0 to 255"),
        (lambda b: b.update(data=b["data"].astype(np.float64) + 0.5), "pixels must be whole numbers from 0 to 255"),
    ],
)
def test_malformed_cifar10_batches_are_one_line_errors(run_cli, tmp_path, change, message):
    write_cifar_batches(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="latin1")
    change(batch)
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    args = ["train-base", "--dataset", "cifar10", "--data-root", tmp_path, "--runs-dir", tmp_path / "runs"]
    one_line_error(run_cli(*args), "data_batch_1", message)


# Random damage: bit flips, truncation and appended bytes never change a result silently


def damaged_copies(data: bytes, count: int, rng: random.Random) -> list[bytes]:
    copies = []
    for k in range(count):
        kind = k % 3
        if kind == 0:  # a bit flip
            position = rng.randrange(len(data))
            copies.append(data[:position] + bytes([data[position] ^ (1 << rng.randrange(8))]) + data[position + 1 :])
        elif kind == 1:  # truncated
            copies.append(data[: rng.randrange(len(data))])
        else:  # bytes appended
            copies.append(data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))
    return copies


@pytest.mark.slow
def test_random_damage_either_gives_the_clean_result_or_one_line(run_cli, trained_mini, tmp_path):
    rng = random.Random(20261129)
    spec = load_spec("mnist-mini")
    sigma = tmp_path / "sigma.pt"
    values = torch.full((1, 28, 28), 0.25)
    values[..., :4] = 0.5
    save_sigma(sigma, values, spec, method="anisotropic", init=0.25)
    checkpoint = tmp_path / "checkpoint.pt"
    shutil.copy(trained_mini / "checkpoint.pt", checkpoint)
    clean = tmp_path / "clean.tsv"
    base = ["certify", "--n0", 10, "--n", 50, "--max", 4]
    assert run_cli(*base, "--checkpoint", checkpoint, "--sigma", sigma, "--out", clean).code == 0
    expected = rows_without_time(clean)
    table = run_cli("plot", "table", clean, "--at", "0,0.1").stdout
    outcomes = {"same result": 0, "one-line error": 0}
    for kind in ("table", "manifest", "sigma", "checkpoint"):
        path = {
            "table": clean,
            "manifest": tmp_path / "clean.tsv.manifest.json",
            "sigma": sigma,
            "checkpoint": checkpoint,
        }
        pristine = path[kind].read_bytes()
        for number, damaged in enumerate(damaged_copies(pristine, 9, rng)):
            out = tmp_path / f"{kind}{number}.tsv"
            if kind in ("table", "manifest"):  # damage a finished table or its manifest, then resume it
                shutil.copy(clean, out)
                shutil.copy(tmp_path / "clean.tsv.manifest.json", tmp_path / f"{kind}{number}.tsv.manifest.json")
                (out if kind == "table" else tmp_path / f"{kind}{number}.tsv.manifest.json").write_bytes(damaged)
            else:  # damage an input file, then certify with it
                path[kind].write_bytes(damaged)
            result = run_cli(*base, "--checkpoint", checkpoint, "--sigma", sigma, "--out", out)
            if result.code == 0:
                assert rows_without_time(out) == expected, (kind, number)
                outcomes["same result"] += 1
            else:
                one_line_error(result)
                outcomes["one-line error"] += 1
            plotted = run_cli("plot", "table", out, "--at", "0,0.1")
            if plotted.code == 0:
                assert plotted.stdout == table, (kind, number)
            else:
                one_line_error(plotted)
            path[kind].write_bytes(pristine)
    assert min(outcomes.values()) >= 5, outcomes  # both ways out were taken
