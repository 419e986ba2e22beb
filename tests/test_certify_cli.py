"""`nrs certify` / `nrs predict` end to end on mnist-mini: files, numbers, resume, bad input."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from processes import Hold, start_nrs

from nrs_cli.io.models import build_model, save_checkpoint
from nrs_cli.io.spec import load_spec
from nrs_cli.method.sigma import save_sigma
from nrs_cli.runs.certification import CERTIFY_SCHEMA, read_results

QUICK = ["--n0", 20, "--n", 100, "--max", 12]


def certify(run_cli, trained_mini, out, *args):
    return run_cli("certify", "--checkpoint", trained_mini / "checkpoint.pt", "--out", out, *args)


def without_time(path):
    rows = read_results(path)
    for row in rows:
        row.pop("time")
        row.pop("crc32")  # covers the time
    return rows


def test_certify_writes_cohens_columns_then_ours(run_cli, trained_mini, tmp_path):
    out = tmp_path / "iso.tsv"
    result = certify(run_cli, trained_mini, out, "--sigma", 0.25, *QUICK)
    assert result.code == 0, result.stderr
    header = out.read_text().splitlines()[0].split("\t")
    assert header[:6] == ["idx", "label", "predict", "radius", "correct", "time"] and header == CERTIFY_SCHEMA.header
    rows = read_results(out)
    assert [int(r["idx"]) for r in rows] == list(range(12))
    summary = json.loads((tmp_path / "iso.tsv.summary.json").read_text())
    manifest = json.loads((tmp_path / "iso.tsv.manifest.json").read_text())
    assert summary["inputs"] == 12 and summary["certified_accuracy"] == sum(r["correct"] == "1" for r in rows) / 12
    assert summary["certified_accuracy"] >= 0.75 and "certified accuracy" in result.stdout
    assert manifest["fingerprint"]["n"] == 100 and manifest["sigma"]["label"] == "0.25"
    assert summary["samples_per_second"] > 0
    rerun = certify(run_cli, trained_mini, out, "--sigma", 0.25, *QUICK)  # nothing left to do
    assert rerun.code == 0 and read_results(out) == rows
    assert json.loads((tmp_path / "iso.tsv.summary.json").read_text()) == summary  # throughput measured before kept
    for row in rows:
        if row["predict"] != "-1":  # isotropic: radius = sigma * Phi^-1(pA_lower) = gm_radius
            assert float(row["radius"]) == pytest.approx(0.25 * float(row["icdf"]), rel=1e-6)
            assert float(row["gm_radius"]) == pytest.approx(float(row["radius"]), rel=1e-6)


def test_same_seed_different_batch_sizes_give_the_same_rows(run_cli, trained_mini, tmp_path):
    for batch in (7, 64, 300):
        assert (
            certify(run_cli, trained_mini, tmp_path / f"b{batch}.tsv", "--sigma", 0.3, "--batch", batch, *QUICK).code
            == 0
        )
    assert (
        without_time(tmp_path / "b7.tsv") == without_time(tmp_path / "b64.tsv") == without_time(tmp_path / "b300.tsv")
    )
    # and another seed draws other noise
    assert certify(run_cli, trained_mini, tmp_path / "s1.tsv", "--sigma", 0.3, "--seed", 1, *QUICK).code == 0
    assert without_time(tmp_path / "s1.tsv") != without_time(tmp_path / "b7.tsv")


def test_anisotropic_sigma_file_and_two_sided_bound(run_cli, trained_mini, tmp_path):
    spec = load_spec("mnist-mini")
    values = torch.full((1, 28, 28), 0.2)
    values[..., :4] = values[..., -4:] = 0.6  # noisier borders
    save_sigma(tmp_path / "sigma.pt", values, spec, method="anisotropic", init=0.2)
    out = tmp_path / "aniso.tsv"
    assert (
        certify(run_cli, trained_mini, out, "--sigma", tmp_path / "sigma.pt", "--bound", "two-sided", *QUICK).code == 0
    )
    for row in read_results(out):
        if row["predict"] != "-1":
            R = float(row["icdf"])
            assert float(row["radius"]) == pytest.approx(0.2 * R, rel=1e-6)  # the smallest semi-axis
            assert float(row["pB_upper"]) <= 1 - float(row["pA_lower"]) + 1e-9  # 10 digits in the file
    assert json.loads((tmp_path / "aniso.tsv.manifest.json").read_text())["sigma"]["method"] == "anisotropic"


def test_predict(run_cli, trained_mini, tmp_path):
    out = tmp_path / "predict.tsv"
    result = run_cli(
        "predict",
        "--checkpoint",
        trained_mini / "checkpoint.pt",
        "--out",
        out,
        "--sigma",
        0.25,
        "--n",
        100,
        "--max",
        10,
    )
    assert result.code == 0, result.stderr
    rows = read_results(out)
    assert list(rows[0]) == ["idx", "label", "predict", "correct", "time", "crc32"] and len(rows) == 10
    assert sum(r["correct"] == "1" for r in rows) >= 8


def launch_certify(trained_mini, out, hold: Hold, inputs=60):
    args = ["certify", "--checkpoint", trained_mini / "checkpoint.pt", "--out", out, "--sigma", 0.25]
    # --chunk-size 100: rows come two at a time on any device, so a held run is held mid-table
    return start_nrs(*args, "--n0", 20, "--n", 400, "--max", inputs, "--chunk-size", 100, hold=hold)


def test_killed_run_resumes_to_the_same_file(run_cli, trained_mini, tmp_path):
    full = tmp_path / "full.tsv"
    assert certify(run_cli, trained_mini, full, "--sigma", 0.25, "--n0", 20, "--n", 400, "--max", 60).code == 0

    out = tmp_path / "killed.tsv"
    hold = Hold(tmp_path, "rows", 5)
    process = launch_certify(trained_mini, out, hold)
    hold.wait(process)
    process.kill()  # no chance to clean up, as after a crash or a lost machine
    process.wait()
    written = len(read_results(out))
    assert 5 <= written < 60
    with open(out, "a") as handle:
        handle.write("17\t3\t3\t0.1")  # and a half-written row, as if killed mid-line
    resumed = certify(run_cli, trained_mini, out, "--sigma", 0.25, "--n0", 20, "--n", 400, "--max", 60)
    assert resumed.code == 0 and f"resuming after row {written} of 60\n" in resumed.stdout
    assert without_time(out) == without_time(full)
    assert json.loads((tmp_path / "killed.tsv.manifest.json").read_text())["resumed"]


def test_interrupted_run_says_so_in_one_line_and_exits_2(trained_mini, tmp_path):
    out = tmp_path / "int.tsv"
    hold = Hold(tmp_path, "rows", 3)
    process = launch_certify(trained_mini, out, hold)
    hold.wait(process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 2
    assert stderr.strip().startswith("error: interrupted") and stderr.strip().count("\n") == 0
    kept = len(read_results(out))
    assert kept >= 3 and out.read_text().endswith("\n")


def test_resume_refuses_other_sigma_model_or_options_and_keeps_the_file(run_cli, trained_mini, tmp_path):
    out = tmp_path / "r.tsv"
    assert certify(run_cli, trained_mini, out, "--sigma", 0.25, *QUICK).code == 0
    before = out.read_bytes()
    spec = load_spec("mnist-mini")
    save_checkpoint(tmp_path / "other.pt", build_model(spec), spec, "mnist_cnn")
    attempts = [  # each refusal names the field with its old and new value
        (["--sigma", 0.5, *QUICK], "sigma_sha256 ("),
        (["--sigma", 0.25, "--n0", 20, "--n", 101, "--max", 12], "n (100 → 101)"),
        (["--sigma", 0.25, "--seed", 9, *QUICK], "seed (0 → 9)"),
        (["--sigma", 0.25, "--precision", "bf16", *QUICK], "precision ('fp32' → 'bf16')"),
        (["--sigma", 0.25, "--n0", 20, "--n", 101, "--max", 5], "n (100 → 101)"),  # a smaller max too
    ]
    for args, differs in attempts:
        result = certify(run_cli, trained_mini, out, *args)
        assert result.code == 2 and f"different {differs}" in result.stderr, result.stderr
    result = run_cli("certify", "--checkpoint", tmp_path / "other.pt", "--out", out, "--sigma", 0.25, *QUICK)
    assert result.code == 2 and "model_sha256" in result.stderr
    assert out.read_bytes() == before


def test_longer_max_extends_a_finished_table(run_cli, trained_mini, tmp_path):
    out = tmp_path / "grow.tsv"
    assert certify(run_cli, trained_mini, out, "--sigma", 0.25, "--n0", 20, "--n", 100, "--max", 5).code == 0
    assert certify(run_cli, trained_mini, out, "--sigma", 0.25, "--n0", 20, "--n", 100, "--max", 12).code == 0
    assert certify(run_cli, trained_mini, tmp_path / "once.tsv", "--sigma", 0.25, *QUICK).code == 0
    assert without_time(out) == without_time(tmp_path / "once.tsv")


def test_a_smaller_max_is_answered_from_the_rows_already_there(run_cli, trained_mini, tmp_path):
    for command in ("certify", "predict"):
        out = tmp_path / f"{command}.tsv"
        args = [command, "--checkpoint", trained_mini / "checkpoint.pt", "--out", out, "--sigma", 0.25, "--n", 100]
        assert run_cli(*args, "--max", 12).code == 0
        files = {path: path.read_bytes() for path in tmp_path.iterdir()}
        result = run_cli(*args, "--max", 5)
        assert result.code == 0, result.stderr
        assert f"answered from the first 5 of the 12 rows already in {out} (no file changed)" in result.stdout
        correct = sum(row["correct"] == "1" for row in read_results(out)[:5])
        assert f"({correct}/5)" in result.stdout  # the summary of the first five inputs
        assert {path: path.read_bytes() for path in tmp_path.iterdir()} == files


def bad_sigma_file(tmp_path, name, values):
    path = tmp_path / name
    torch.save({"sigma": values}, path)
    return path


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sigma", 0], "sigma must be a positive finite number, got 0.0"),
        (["--sigma", -0.5], "sigma must be a positive finite number"),
        (["--sigma", "nan"], "sigma must be a positive finite number"),
        (["--sigma", 1e-46], "sigma has 784 values <= 0 (sigma must be positive) in float32"),
        (["--sigma", 1e39], "sigma has 784 non-finite values in float32"),
        (["--sigma", 2000], "sigma has 784 values outside [1e-06, 1000]"),
        (["--sigma", 0.25, "--alpha", 0], "certify.alpha: expected a number strictly between 0 and 1, got 0.0"),
        (["--sigma", 0.25, "--alpha", 1.5], "certify.alpha: expected a number strictly between 0 and 1"),
        (["--sigma", 0.25, "--n0", 0], "certify.n0: expected a number of samples from 1 to 10^12, got 0"),
        (["--sigma", 0.25, "--n", 0], "certify.n: expected a number of samples from 1"),
        (["--sigma", 0.25, "--bound", "three-sided"], "certify.bound: expected one of one-sided, two-sided"),
        (["--sigma", 0.25, "--skip", 0], "certify.skip: expected a count from 1"),
        (["--sigma", 0.25, "--max", -5], "certify.max: expected -1 (all) or a count up to 2^62, got -5"),
        (["--sigma", 0.25, "--chunk-size", -5], "engine.chunk_size: expected 0 (chosen per device)"),
        (["--sigma", 0.25, "--seed", 2**70], "seed: expected an integer from 0 to 2^63 - 1"),
        (["--sigma", 0.25, "--set", "certify.alpha="], "--set certify.alpha: no value (write null for none)"),
        (["--sigma", 0.25, "--precision", "fp8"], "engine.precision: expected one of fp32, bf16"),
        (["--sigma", "missing.pt"], "sigma file not found"),
    ],
)
def test_bad_options_exit_2_with_one_line(run_cli, trained_mini, tmp_path, args, message):
    result = certify(run_cli, trained_mini, tmp_path / "x.tsv", *args)
    assert result.code == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "x.tsv").exists()


def test_bad_sigma_files(run_cli, trained_mini, tmp_path):
    cases = {
        "shape.pt": (torch.full((1, 28, 27), 0.3), "sigma has shape 1x28x27, but mnist-mini inputs are 1x28x28"),
        "zero.pt": (torch.full((1, 28, 28), 0.3).index_fill_(2, torch.tensor([3]), 0.0), "28 values <= 0"),
        "nan.pt": (torch.full((1, 28, 28), float("nan")), "784 non-finite values"),
        "int.pt": (torch.ones((1, 28, 28), dtype=torch.int64), "floating-point tensor"),
    }
    for name, (values, message) in cases.items():
        result = certify(run_cli, trained_mini, tmp_path / "x.tsv", "--sigma", bad_sigma_file(tmp_path, name, values))
        assert result.code == 2 and message in result.stderr, result.stderr
    (tmp_path / "garbage.pt").write_bytes(os.urandom(300))
    result = certify(run_cli, trained_mini, tmp_path / "x.tsv", "--sigma", tmp_path / "garbage.pt")
    assert result.code == 2 and "cannot read sigma file" in result.stderr


def test_checkpoint_for_another_dataset_is_refused(run_cli, tmp_path):
    spec = load_spec("fashion-mnist")
    save_checkpoint(tmp_path / "fashion.pt", build_model(spec), spec, "mnist_cnn")
    result = run_cli("certify", "--checkpoint", tmp_path / "fashion.pt", "--sigma", 0.25, "--out", tmp_path / "x.tsv")
    assert result.code == 2 and "trained on fashion-mnist, not mnist-mini" in result.stderr
    result = run_cli("certify", "--checkpoint", tmp_path / "none.pt", "--sigma", 0.25, "--out", tmp_path / "x.tsv")
    assert result.code == 2 and "checkpoint not found" in result.stderr


def test_default_output_path(run_cli, trained_mini, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = Path(trained_mini).parents[1]
    result = run_cli("certify", "--runs-dir", runs, "--sigma", 0.25, "--n0", 10, "--n", 50, "--max", 2)
    assert result.code == 0, result.stderr
    assert (runs / "mnist-mini" / "certify" / "iso-0.25_n50.tsv").is_file()
