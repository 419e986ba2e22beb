import json
import shutil
import signal
from pathlib import Path

from processes import Hold, start_nrs

from nrs_cli.version import __version__


def test_list_shows_every_registry(run_cli):
    datasets = run_cli("list")
    assert datasets.code == 0
    for name in ("mnist", "fashion-mnist", "mnist-mini", "cifar10", "imagenet", "kitti"):
        assert name in datasets.stdout
    archs = run_cli("list", "archs")
    assert all(a in archs.stdout for a in ("mnist_cnn", "cifar_resnet110", "resnet50"))
    loaders = run_cli("list", "loaders")
    assert all(a in loaders.stdout for a in ("imagefolder", "kitti", "mnist-mini"))
    wrong = run_cli("list", "models")
    assert wrong.code == 2 and "expected datasets, loaders or archs" in wrong.stderr


def test_version_and_subcommand_help(run_cli):
    assert __version__ in run_cli("--version").stdout
    for command in (
        ["train-base"],
        ["certify"],
        ["predict"],
        ["optimize-sigma"],
        ["visualize-sigma"],
        ["figures"],
        ["plot", "certified-accuracy"],
        ["plot", "clean-accuracy"],
        ["plot", "table"],
    ):
        result = run_cli(*command, "--help")
        assert result.code == 0 and "Usage: nrs" in result.stdout, command


def test_usage_errors_exit_2(run_cli):
    assert run_cli("certify", "--n", "x").code == 2
    assert run_cli("no-such-command").code == 2


def certify_as_typed(folder: Path, runs: Path) -> tuple[str, Path]:
    """`nrs certify --n 1000 --alpha 0.001` in ``folder``, interrupted after its first rows: stdout and the TSV."""
    hold = Hold(folder, "rows", 1)
    process = start_nrs("certify", "--n", 1000, "--alpha", 0.001, cwd=folder, hold=hold)
    hold.wait(process)
    tsvs = sorted(runs.glob("certify/*.tsv"))
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 2 and stderr.startswith("error: interrupted"), stderr
    (tsv,) = tsvs
    return stdout, tsv


def test_certify_as_typed_uses_the_spec_sigma_then_the_best_point_of_the_latest_sweep(
    run_cli, trained_mini, tmp_path, monkeypatch
):
    runs = tmp_path / "runs" / "mnist-mini"
    shutil.copytree(trained_mini, runs / "base")  # as after `nrs train-base`
    stdout, tsv = certify_as_typed(tmp_path, runs)
    assert "sigma: 0.25 (the spec's certify.sigma" in stdout and tsv.name == "iso-0.25_n1000.tsv"

    monkeypatch.chdir(tmp_path)  # as after a (small) `nrs optimize-sigma`
    sweep = run_cli("optimize-sigma", "--inits", 2, "--sub-epochs", 1, "--steps", 2, "--eval-max", 10)
    assert sweep.code == 0, sweep.stderr
    points = json.loads((runs / "optimize" / "sweep" / "summary.json").read_text())["anisotropic"]
    gained = [p for p in points if p["gain_at_equal_accuracy"] is not None]
    best = (
        max(gained, key=lambda p: p["gain_at_equal_accuracy"]) if gained else max(points, key=lambda p: p["accuracy"])
    )
    tsv.unlink()
    stdout, tsv = certify_as_typed(tmp_path, runs)
    assert f"sigma: {Path('runs/mnist-mini/optimize/sweep') / best['sigma_file']}" in stdout
    assert tsv.name == f"{Path(best['sigma_file']).stem}_n1000.tsv"


def test_optimize_sigma_as_typed_without_a_base_classifier_says_how_to_get_one(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("optimize-sigma", "--dataset", "kitti")
    assert result.code == 2 and result.stderr.count("\n") == 1
    assert "nrs train-base --dataset kitti --data-root" in result.stderr and "--checkpoint" in result.stderr
