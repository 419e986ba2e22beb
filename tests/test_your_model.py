"""A new user's path, end to end: their torchvision ResNet-18 (saved as a state_dict) and their folder of
PNGs, certified and optimised from the command line with no YAML written by hand, and the same
certificate from Python in three lines, identical for the same seed.

ResNet-18 runs about 100 noisy 32x32 samples a second on two busy cores: inputs and sample counts are tiny.
"""

from __future__ import annotations

import torch
import torchvision
from fixtures import write_image_folder

from nrs_cli.io.tables import format_cell
from nrs_cli.method.sigma import load_sigma
from nrs_cli.runs.certification import read_results

CERTIFY = ["--sigma", 0.25, "--n0", 8, "--n", 32, "--max", 3]
COLUMNS = ("predict", "radius", "pA_lower", "pB_upper", "icdf", "log_area", "gm_radius")


def test_a_torchvision_state_dict_and_a_folder_of_pngs(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_image_folder(tmp_path / "images", [f"class{k}" for k in range(10)], 4, (32, 32), learnable=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), "resnet18_state.pt")
    model = ["--checkpoint", "resnet18_state.pt", "--arch", "torchvision:resnet18"]

    result = run_cli("certify", *model, "--dataset", "images", *CERTIFY)
    assert result.code == 0, result.stderr
    rows = read_results("runs/images/certify/iso-0.25_n32.tsv")
    assert [int(row["idx"]) for row in rows] == [0, 1, 2] and [row["label"] for row in rows] == ["0", "1", "2"]

    # the same three certificates from Python: the three lines of the README's "Certify your own model"
    from nrs_cli import Smooth, load_data, load_model

    model_, test = load_model("resnet18_state.pt", arch="torchvision:resnet18", dataset="images"), load_data("images")
    certificates = [Smooth(model_, 10, 0.25).certify(test[i][0], 8, 32, 0.001, seed=0, indices=i) for i in range(3)]
    for row, certificate, i in zip(rows, certificates, range(3)):
        assert test[i][1] == int(row["label"])
        assert {c: row[c] for c in COLUMNS} == {c: format_cell(v) for c, v in certificate.cells().items()}

    optimized = run_cli(
        "optimize-sigma", *model, "--dataset", "images", "--inits", 1, "--sub-epochs", 1, "--steps", 2,
        "--batch-size", 2, "--n0", 2, "--eval-max", 2, "--eval-n0", 4, "--eval-n", 8, "--no-baseline",
    )  # fmt: skip
    assert optimized.code == 0, optimized.stderr
    sigma = load_sigma("runs/images/optimize/sweep/sigmas/init00-0.125_sub01.pt")
    assert sigma.values.shape == (3, 32, 32) and sigma.metadata["method"] == "anisotropic"

    # the data root alone names the folder; the sigma file goes straight back into certify
    again = run_cli("certify", *model, "--data-root", "images", *CERTIFY[2:], "--sigma", sigma.source)
    assert again.code == 0, again.stderr
    assert len(read_results("runs/images/certify/init00-0.125_sub01_n32.tsv")) == 3


BRIGHTNESS_NET = '''from torch import nn


def build(num_classes):
    """Class 1 when the mean pixel is above one half (the folder's classes are a dark and a bright shade)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, num_classes))
'''
SMALL = {
    "optimize.inits": 2, "optimize.init": 0.1, "optimize.init_step": 0.1, "optimize.sub_epochs": 1,
    "optimize.steps_per_sub_epoch": 2, "optimize.batch_size": 4, "optimize.n0": 4, "optimize.eval_n0": 8,
    "optimize.eval_n": 32, "optimize.eval_alpha": 0.01, "certify.n0": 8, "certify.n": 32, "certify.alpha": 0.01,
    "figures.sigmas": 1,
}  # fmt: skip


def test_figures_and_visualize_sigma_on_a_folder(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "brightness.py").write_text(BRIGHTNESS_NET)
    write_image_folder(tmp_path / "shades", ["0-dark", "1-bright"], 10, (8, 8), learnable=True)
    state = {"2.weight": torch.tensor([[-10.0] * 3, [10.0] * 3]), "2.bias": torch.tensor([15.0, -15.0])}
    torch.save(state, "brightness.pt")
    settings = [item for key, value in SMALL.items() for item in ("--set", f"{key}={value}")]
    model = ["--checkpoint", "brightness.pt", "--arch", "brightness:build"]
    result = run_cli("figures", "--data-root", "shades", *model, *settings)
    assert result.code == 0, result.stderr
    assert (tmp_path / "figures/shades/fig2-clean-accuracy.png").is_file()
    assert (tmp_path / "figures/shades/fig3-sigma.png").is_file()
    sigma = next((tmp_path / "runs/shades/optimize/figures/sigmas").glob("*.pt"))
    shown = run_cli("visualize-sigma", sigma, "--dataset", "shades", "--out", "sigma-image")
    assert shown.code == 0, shown.stderr
    assert (tmp_path / "sigma-image.png").is_file()
