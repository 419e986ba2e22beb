from nrs_cli import __version__


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
    assert run_cli("certify").code == 2  # --sigma is required
    assert run_cli("no-such-command").code == 2
