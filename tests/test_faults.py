"""Faults and bad input: every expected failure is one `error:` line and exit code 2, nothing written is lost.

Concurrency, signals and kills are driven with real processes; the rest runs
the CLI in this process. Each case checks the exit code, that stderr is one
line starting with ``error:``, and that the files written before are intact
and resumable.
"""

from __future__ import annotations

import errno
import json
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures import write_idx, write_mnist_raw
from processes import Hold, start_nrs

from nrs_cli.io.models import build_model, save_checkpoint
from nrs_cli.io.spec import load_spec
from nrs_cli.method.sigma import save_sigma
from nrs_cli.runs.certification import read_results

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
    for delay in (0.3, 1.5):
        process = start_nrs(*args)
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
        (lambda p: p.update(std=["wide"]), "std must be positive numbers"),
        (lambda p: p.update(std=[0.0]), "std must be positive"),
        (lambda p: p["state_dict"]["1.fc2.bias"].fill_(float("nan")), "not finite"),
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
        (["train-base", "--batch-size", 0], "train.batch_size: expected at least 1"),
        (["train-base", "--lr", -1], "train.lr: expected a positive number"),
        (["train-base", "--epochs", -1], "train.epochs: expected 0 or more"),
        (["train-base", "--set", "data.mean=[0.1, 0.2]"], "data.mean and data.std need one value per channel"),
        (["train-base", "--set", "name=../../x"], "name: expected up to 100 letters, digits"),
        (["train-base", "--seed", 2**64], "seed: expected an integer from 0 to 2^63 - 1"),
        (["plot", "table", "x.tsv", "--axis", "all"], "unknown axis 'all'"),
        (["visualize-sigma", "s.pt", "--columns", -1], "--columns"),
        (["certify", "--sigma", 0.25, "--batch", -5], "engine.chunk_size"),
        (["predict", "--sigma", 0.25, "--max", -5], "certify.max: expected -1 (all) or a count"),
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
