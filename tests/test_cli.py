import json
import re
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


def every_command() -> list[list[str]]:
    """The path of every command ``nrs`` has (``["plot", "table"]``), groups walked."""
    import typer

    from nrs_cli.cli.app import app

    def walk(group, path):
        for name, command in group.commands.items():
            yield from walk(command, [*path, name]) if hasattr(command, "commands") else [[*path, name]]

    return list(walk(typer.main.get_command(app), []))


def test_every_command_help_groups_its_options_into_panels_with_readable_placeholders(run_cli):
    from nrs_cli.cli.manual import PANELS

    assert __version__ in run_cli("--version").stdout
    commands = every_command()
    assert len(commands) == 13 and ["plot", "table"] in commands and ["spec", "new"] in commands
    for command in commands:
        result = run_cli(*command, "--help")
        assert result.code == 0 and result.stdout.startswith(f"Usage: nrs {' '.join(command)} "), command
        text = result.stdout
        for raw in ("<int>", "<str>", "<path>", "<float", "<list[", "{", "TEXT...", "PATH..."):
            assert raw not in text, (command, raw)
        sections = re.findall(r"^(\S[^:\n]*):$", text, flags=re.MULTILINE)
        assert sections and sections[-1] == "Other options", (command, sections)
        assert set(sections) - {"Arguments", "Other options"} <= set(PANELS), (command, sections)
        other = text.split("Other options:\n", 1)[1]
        assert re.findall(r"^  (-\S+)", other, flags=re.MULTILINE) == ["--help"], (command, other)
    seeded = {" ".join(c) for c in commands if "--seed N" in run_cli(*c, "--help").stdout}
    assert seeded == {"train-base", "certify", "predict", "optimize-sigma", "co-optimize", "figures", "compare"}


def test_nrs_help_lists_every_command_in_order_with_its_whole_summary(run_cli):
    from nrs_cli.cli.manual import COMMAND_ORDER

    text = run_cli("--help").stdout
    listed = text.split("Commands:\n", 1)[1]
    names = re.findall(r"^  (\S+)", listed, flags=re.MULTILINE)
    assert names == list(COMMAND_ORDER)
    flat = " ".join(listed.split())
    for summary in (
        "Co-optimise the network and a per-element sigma: rounds of fine-tuning under the current sigma and "
        "Algorithm 1 on the frozen network, from each constant sigma (beyond the paper).",
        "Certify the smoothed classifier on a split (CERTIFY with the ellipsoid of Theorem 3.1).",
        "Draw the paper's figures and tables from result files (PNG and PDF).",
    ):
        assert summary in flat
    assert "..." not in listed
    plot = run_cli("plot", "--help").stdout
    assert "Certified accuracy at chosen thresholds, as Markdown and LaTeX tables." in " ".join(plot.split())


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


def test_compare_and_figures_take_an_image_folder_from_data_root(run_cli, tmp_path, monkeypatch):
    from fixtures import write_image_folder

    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "pets", ["cat", "dog"], 4, (8, 8))
    for command in ("compare", "figures"):  # the folder, not mnist-mini: it has no network until --arch names one
        result = run_cli(command, "--data-root", tmp_path / "pets")
        assert result.code == 2 and "no architecture for pets: pass --arch" in result.stderr
