import csv
import json
import subprocess
import sys
from importlib.metadata import version

import torch
from torch import nn

from nrs_cli.io.data import ImageTensorDataset
from nrs_cli.io.models import load_checkpoint, model_digest
from nrs_cli.io.spec import load_spec
from nrs_cli.method.sigma import Sigma, constant_sigma
from nrs_cli.runs.train import TrainJob, train_base


class Spy(nn.Module):
    """Records what the network is fed."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x


def gray_dataset(count=256):
    images = torch.full((count, 1, 28, 28), 128, dtype=torch.uint8)
    return ImageTensorDataset(images, torch.arange(count) % 10)


def train_spy(noise):
    spec = load_spec("mnist-mini", {"train.epochs": 1, "train.batch_size": 256})
    spy = Spy()
    model = nn.Sequential(spy, nn.Flatten(), nn.Linear(784, 10))
    train_base(TrainJob(spec, model, gray_dataset(), gray_dataset(10), torch.device("cpu"), noise))
    return spy.seen[0] - 128 / 255  # what was added to the clean images


def test_without_noise_the_network_sees_clean_images():
    assert float(train_spy(None).abs().max()) == 0.0


def test_scalar_noise_augmentation_is_applied():
    added = train_spy(constant_sigma(0.5, (1, 28, 28)))
    assert abs(float(added.std()) - 0.5) < 0.01 and abs(float(added.mean())) < 0.01


def test_per_element_noise_augmentation_follows_sigma():
    values = torch.full((1, 28, 28), 0.05)
    values[..., 14:] = 1.0
    added = train_spy(Sigma(values, "halves"))
    assert abs(float(added[..., :14].std()) - 0.05) < 0.002
    assert abs(float(added[..., 14:].std()) - 1.0) < 0.03


def test_train_base_cli_writes_checkpoint_metrics_and_manifest(run_cli, tmp_path):
    result = run_cli(
        "train-base",
        "--runs-dir",
        tmp_path,
        "--name",
        "quick",
        "--epochs",
        1,
        "--train-size",
        500,
        "--noise-sigma",
        0.25,
        "--seed",
        3,
    )
    assert result.code == 0, result.stderr
    assert "test accuracy:" in result.stdout
    run = tmp_path / "mnist-mini" / "quick"
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["spec"]["train"]["noise_sigma"] == 0.25
    assert manifest["versions"]["torch"] == version("torch")
    model, meta = load_checkpoint(run / "checkpoint.pt", load_spec("mnist-mini"))
    assert manifest["model_sha256"] == model_digest(model)
    printed = float(result.stdout.split("test accuracy:")[1].split("%")[0]) / 100
    assert abs(printed - float(rows[0]["test_accuracy"])) < 1e-3


def test_same_seed_same_model(run_cli, tmp_path):
    for name in ("a", "b"):
        args = ("train-base", "--runs-dir", tmp_path, "--name", name, "--epochs", 1, "--train-size", 200)
        assert run_cli(*args).code == 0
    digests = {json.loads((tmp_path / "mnist-mini" / n / "manifest.json").read_text())["model_sha256"] for n in "ab"}
    assert len(digests) == 1


def test_default_run_reaches_95_percent(trained_mini):
    """`nrs train-base` with no arguments on mnist-mini (the README's promise)."""
    manifest = json.loads((trained_mini / "manifest.json").read_text())
    assert manifest["test_accuracy"] >= 0.95


def test_help_texts_and_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "nrs_cli", "--help"], capture_output=True, text=True, check=True)
    assert "train-base" in out.stdout
    out = subprocess.run([sys.executable, "-m", "nrs_cli", "train-base", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--noise-sigma" in out.stdout and "--data-root" in out.stdout
