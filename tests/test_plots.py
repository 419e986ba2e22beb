"""Figures and tables: the numbers that are drawn, the filter, the sigma images, the files."""

import json
import shutil

import numpy as np
import pytest
import torch
from matplotlib.ticker import PercentFormatter
from PIL import Image
from scipy.stats import norm

from nrs_cli.experiments.figures import choose_sigmas
from nrs_cli.io.spec import load_spec
from nrs_cli.io.tables import write_table
from nrs_cli.method.sigma import Sigma, save_sigma
from nrs_cli.reports import plots, sigma_images
from nrs_cli.reports.plots import blanket_filter, load_sweep, plot_certified_accuracy, plot_clean_accuracy
from nrs_cli.reports.result_files import certified_accuracy_at, certified_accuracy_curve, load_result
from nrs_cli.reports.sigma_images import robustness_report, sigma_to_image
from nrs_cli.reports.tables import default_thresholds, latex_table, markdown_table
from nrs_cli.runs.certification import CERTIFY_SCHEMA, read_results
from nrs_cli.runs.optimization import SWEEP_SCHEMA, read_metrics

# (correct, log_area, radius): 6 inputs, 4 correct, one abstention, one wrong
ROWS = [
    (1, -300.0, 0.5),
    (1, -100.0, 0.9),
    (0, -200.0, 0.4),
    (1, -300.0, 0.2),
    (0, float("-inf"), 0.0),
    (1, -50.0, 1.2),
]


def write_result(path, rows, method="anisotropic", init=0.3, sub_epoch=None):
    """A certify table whose certificates follow from their bounds: smallest sigma 0.5, geometric mean 1."""
    table = []
    for i, (correct, area, radius) in enumerate(rows):
        icdf = radius / 0.5  # 0 for the abstention
        abstained = area == float("-inf")
        pA_lower = float(norm.cdf(icdf)) if not abstained else 0.4
        table.append(
            {
                "idx": i,
                "label": 1,
                "predict": -1 if abstained else 1 if correct else 2,
                "radius": radius,
                "correct": correct,
                "time": 0.1,
                "pA_lower": pA_lower,
                "pB_upper": 1 - pA_lower,
                "icdf": icdf,
                "log_area": area,
                "gm_radius": icdf,
            }
        )
    write_table(path, CERTIFY_SCHEMA, table)
    manifest = {
        "sigma": {"method": method, "init": init} | ({"sub_epoch": sub_epoch} if sub_epoch is not None else {}),
        "fingerprint": {"n0": 100, "n": 1000, "alpha": 0.001, "bound": "one-sided"},
    }
    path.with_name(path.stem + ".manifest.json").write_text(json.dumps(manifest))
    return path


def test_certified_accuracy_of_a_hand_made_result(tmp_path):
    rows = load_result(write_result(tmp_path / "r.tsv", ROWS)).rows
    # certified accuracy at x: correct AND certificate >= x, over all 6 inputs
    assert certified_accuracy_at(rows, "log_area", [-1000, -300, -299, -100, -50, -49]) == pytest.approx(
        [4 / 6, 4 / 6, 2 / 6, 2 / 6, 1 / 6, 0]
    )
    assert certified_accuracy_at(rows, "radius", [0, 0.2, 0.5, 0.6, 1.2, 2]) == pytest.approx(
        [4 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0]
    )
    x, y = certified_accuracy_curve(rows, "radius")
    assert x.tolist() == [0.0, 0.2, 0.5, 0.9, 1.2]
    assert y.tolist() == pytest.approx([4 / 6, 3 / 6, 2 / 6, 1 / 6, 0])


def capture(monkeypatch, module=plots):
    figures = []

    def keep(figure, out_stem):
        figures.append(figure)
        return [out_stem]

    monkeypatch.setattr(module, "save_figure", keep)
    return figures


def reads_in_percent(axis) -> bool:
    """Accuracies (fractions) labelled in percent: 0.5 is 50%."""
    formatter = axis.get_major_formatter()
    return isinstance(formatter, PercentFormatter) and formatter.xmax == 1.0 and formatter.convert_to_pct(0.5) == 50


def test_the_drawn_lines_are_the_certified_accuracy_curves(tmp_path, monkeypatch):
    a = load_result(write_result(tmp_path / "a.tsv", ROWS, sub_epoch=2))
    b = load_result(write_result(tmp_path / "b.tsv", ROWS[:2], method="isotropic", init=0.4))
    figures = capture(monkeypatch)
    plot_certified_accuracy([a, b], "radius", tmp_path / "fig")
    axes = figures[0].axes[0]
    lines = axes.get_lines()
    assert [line.get_label() for line in lines] == ["optimized from σ = 0.3, sub-epoch 2", "isotropic, σ = 0.4"]
    assert reads_in_percent(axes.yaxis)
    assert lines[0].get_xdata().tolist() == [0.0, 0.2, 0.5, 0.9, 1.2]
    assert np.allclose(lines[0].get_ydata(), [4 / 6, 3 / 6, 2 / 6, 1 / 6, 0])
    assert np.allclose(lines[1].get_ydata(), [1.0, 0.5, 0.0])  # b: two correct inputs of two
    assert lines[1].get_linestyle() == "--"  # isotropic baselines dashed
    assert "l2 radius" in axes.get_xlabel() and axes.get_ylabel() == "certified accuracy"
    co = load_result(write_result(tmp_path / "co.tsv", ROWS, method="co-optimized", init=0.25, sub_epoch=3))
    assert co.label == "co-optimized from σ = 0.25, round 3"
    assert "n0=100, n=1000" in figures[0].texts[0].get_text()  # sample sizes on the figure


def test_blanket_filter_on_a_hand_made_point_set():
    # (mean log_area, accuracy)
    points = [(-500, 0.99), (-300, 0.97), (-400, 0.96), (-200, 0.90), (-600, 0.95), (-250, 0.85), (-100, 0.80)]
    keep = blanket_filter(points)
    # -400 at 96% lies between -500 (99%) and -300 (97%): covered on both sides, dropped.
    # -250 at 85% lies between -300 and -200, both more accurate: dropped.
    # -600 at 95% extends the range to the left: kept, though less accurate than its neighbours.
    assert keep == [True, True, False, True, True, False, True]
    assert blanket_filter([]) == []
    assert blanket_filter([(float("nan"), 0.5), (-10, 0.4)]) == [False, True]


def write_sweep(run_dir, iso, aniso):
    run_dir.mkdir(parents=True)
    lines = [",".join(SWEEP_SCHEMA.header)]
    for method, points in (("isotropic", iso), ("anisotropic", aniso)):
        for k, (area, accuracy) in enumerate(points):
            row = {c: "" for c in SWEEP_SCHEMA.header}
            isotropic = method == "isotropic"
            row.update(
                method=method,
                init=0.1 * (k + 1) if isotropic else 0.25,
                sub_epoch=0 if isotropic else k + 1,
                step=k,
                accuracy=accuracy,
                mean_log_area=area,
                sigma_file="" if isotropic else "s.pt",
            )
            lines.append(",".join(str(row[c]) for c in SWEEP_SCHEMA.header))
    (run_dir / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_clean_accuracy_plot_draws_filtered_and_isotropic_points(tmp_path, monkeypatch):
    iso = [(-900, 0.98), (-600, 0.9), (-650, 0.7)]
    aniso = [(-500, 0.99), (-400, 0.96), (-300, 0.97)]
    write_sweep(tmp_path / "run", iso, aniso)
    figures = capture(monkeypatch)
    plot_clean_accuracy([load_sweep(tmp_path / "run")], tmp_path / "fig", unfiltered=True)
    axes = figures[0].axes[0]
    lines = {line.get_label(): line for line in axes.get_lines()}
    kept = lines["anisotropic (blanket-filtered)"]
    assert kept.get_xdata().tolist() == [-500, -300] and kept.get_ydata().tolist() == [0.99, 0.97]
    assert lines["isotropic"].get_xdata().tolist() == [-900, -600, -650]  # in order of sigma, not of area
    scatter = axes.collections[0].get_offsets()
    assert len(scatter) == 3  # the unfiltered points, faint
    assert reads_in_percent(axes.yaxis)
    points = [(accuracy, area) for area, accuracy in iso]
    plots.plot_methods({"A": points}, {"A": points}, tmp_path / "methods")
    assert reads_in_percent(figures[1].axes[0].yaxis)


def test_grey_sigma_image_is_scaled_linearly_to_the_full_range():
    values = torch.tensor([[[0.1, 0.2], [0.3, 0.5]]])
    image = sigma_to_image(values)
    assert image.dtype == np.uint8 and image.shape == (2, 2)
    assert image.tolist() == [[0, 64], [128, 255]]  # (v - 0.1) / 0.4 * 255, rounded
    assert sigma_to_image(torch.full((1, 2, 2), 0.3)).tolist() == [[128, 128], [128, 128]]


def test_clipped_sigma_image_keeps_its_contrast_despite_one_outlier():
    values = torch.full((1, 10, 10), 0.2)
    values[..., :5, :] = 0.4  # the top half tolerates twice the noise
    values[..., 0, 0] = 5.0  # one ignored corner pixel, far above the rest
    full_range = sigma_to_image(values)
    assert full_range[1:5].max() <= 11  # min to max: 0.4 is near black, the halves look alike
    clipped = sigma_to_image(values, clip=0.01)
    assert clipped[0, 0] == 255 and (clipped[5:] == 0).all()
    assert clipped[1:5].min() >= 200  # the top half is bright, as it should read


def test_colour_sigma_is_scaled_globally_so_a_colour_bias_stays():
    values = torch.stack([torch.full((2, 2), 0.5), torch.full((2, 2), 0.1), torch.tensor([[0.1, 0.5], [0.3, 0.3]])])
    image = sigma_to_image(values)
    assert image.shape == (2, 2, 3)
    assert image[..., 0].tolist() == [[255, 255], [255, 255]]  # red: the most noise everywhere
    assert image[..., 1].tolist() == [[0, 0], [0, 0]]  # green: the least (per-channel scaling would lose this)
    assert image[..., 2].tolist() == [[0, 255], [128, 128]]


def test_sigmas_side_by_side_share_one_scale_and_one_colour_bar(monkeypatch):
    quiet = Sigma(torch.full((1, 4, 4), 0.25), "quiet", {"init": 0.25})
    loud = torch.full((1, 4, 4), 0.5)
    loud[..., :2] = 0.75
    figures = capture(monkeypatch, sigma_images)
    sigma_images.plot_sigmas([quiet, Sigma(loud, "loud", {"init": 0.5})], "fig", clip=0.0)
    (figure,) = figures
    images = [image for axis in figure.axes for image in axis.get_images()]
    assert len(images) == 2 and len(figure.axes) == 2 + 1  # two images, one colour bar
    # one range, 0.25 to 0.75, for both: the constant 0.25 is black (alone it would be mid-grey), 0.5 mid-grey
    assert (images[0].get_array() == 0).all()
    assert images[1].get_array()[0, 3] == 128 and images[1].get_array()[0, 0] == 255
    bar = figure.axes[2]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["0.250", "0.375", "0.500", "0.625", "0.750"]
    colour = [Sigma(torch.full((3, 4, 4), v), str(v), {"init": v}) for v in (0.1, 0.3)]
    sigma_images.plot_sigmas(colour, "fig", clip=0.0)
    assert [image.get_array()[0, 0, 0] for axis in figures[1].axes for image in axis.get_images()] == [0, 255]
    assert "σ from 0.100 (dark) to 0.300 (bright) in every image" in [t.get_text() for t in figures[1].texts]


def test_robustness_report_names_the_noisy_border_and_the_sensitive_centre():
    values = torch.full((1, 28, 28), 0.2)
    values[..., :7, :] = 1.0  # top rows tolerate noise
    values[..., 10:17, 10:17] = 0.05  # the centre does not
    report = robustness_report(Sigma(values, "s", {"dataset": "mnist", "init": 0.2}))
    most, least = report.split("Least noise tolerated")
    assert "rows 0-6" in most.splitlines()[5] and "top" in most.splitlines()[5]
    assert "rows 7-13, columns 7-13" in least.splitlines()[1] and "interior" in least.splitlines()[1]
    colour = robustness_report(Sigma(torch.stack([torch.full((4, 4), v) for v in (0.3, 0.1, 0.2)]), "c"))
    assert "most noise on red, least on green" in colour


def test_default_table_thresholds_span_the_bulk_of_the_certificates(tmp_path):
    areas = np.linspace(-3000, -1000, 101)  # correct inputs, one certificate each
    radii = np.linspace(0.001, 1, 101)  # a certified input has a positive radius
    result = load_result(write_result(tmp_path / "r.tsv", [(1, a, r) for a, r in zip(areas, radii)]))
    # 10th to 90th percentile: -2800 to -1200, step 400 rounded up to 500, from the multiple below
    assert default_thresholds([result], "log_area") == [-3000, -2500, -2000, -1500]
    assert default_thresholds([result], "radius") == [0, 0.25, 0.5, 0.75]  # radii from 0, up to 0.9


def test_tables_in_markdown_and_latex(tmp_path):
    a = load_result(write_result(tmp_path / "a.tsv", ROWS))
    b = load_result(write_result(tmp_path / "b.tsv", ROWS[:2], method="isotropic", init=0.4))
    markdown = markdown_table([a, b], "radius", [0.0, 0.5])
    assert "| optimized from σ = 0.3 | 66.7 | 50.0 |" in markdown  # radii 0.5, 0.9, 1.2 of 6 inputs
    assert "| isotropic, σ = 0.4 | **100.0** | **100.0** |" in markdown
    latex = latex_table([a, b], "radius", [0.0, 0.5])
    assert r"isotropic, $\sigma$ = 0.4 & \textbf{100.0} & \textbf{100.0} \\" in latex
    assert latex.startswith(r"\begin{tabular}{lrr}")
    nobody = markdown_table([a, b], "radius", [5.0])  # no input certified that far: no leader to mark
    assert "| isotropic, σ = 0.4 | 0.0 |" in nobody and "**" not in nobody.split("\n", 1)[1]


def is_png(path):
    with Image.open(path) as image:
        return image.format == "PNG" and image.size[0] > 300


def test_plot_cli_writes_png_and_pdf(run_cli, tmp_path):
    a = write_result(tmp_path / "a.tsv", ROWS)
    b = write_result(tmp_path / "b.tsv", ROWS[:3], method="isotropic", init=0.4)
    result = run_cli("plot", "certified-accuracy", a, b, "--out", tmp_path / "f1")
    assert result.code == 0, result.stderr
    for suffix in ("area", "radius", "gm-radius"):
        assert is_png(tmp_path / f"f1-{suffix}.png")
        assert (tmp_path / f"f1-{suffix}.pdf").read_bytes().startswith(b"%PDF")
    write_sweep(tmp_path / "run", [(-900, 0.98)], [(-500, 0.99)])
    assert run_cli("plot", "clean-accuracy", tmp_path / "run", "--out", tmp_path / "f2").code == 0
    assert is_png(tmp_path / "f2.png") and (tmp_path / "f2.pdf").is_file()
    result = run_cli("plot", "table", a, b, "--axis", "radius", "--at", "0,0.5", "--out", tmp_path / "t")
    assert result.code == 0 and "66.7" in (tmp_path / "t.md").read_text() and (tmp_path / "t.tex").is_file()
    bad = run_cli("plot", "table", a, "--at", "x,y")
    assert bad.code == 2 and "--at expects comma-separated numbers" in bad.stderr
    axis = run_cli("plot", "certified-accuracy", a, "--axis", "volume", "--out", tmp_path / "f4")
    assert axis.code == 2 and "unknown axis 'volume'" in axis.stderr
    single = run_cli("plot", "certified-accuracy", a, "--axis", "radius", "--out", tmp_path / "f5")
    assert single.code == 0 and (tmp_path / "f5.png").is_file() and not (tmp_path / "f5-area.png").exists()
    missing = run_cli("plot", "certified-accuracy", tmp_path / "nope.tsv", "--out", tmp_path / "f3")
    assert missing.code == 2 and "result file not found" in missing.stderr


def test_visualize_sigma_cli(run_cli, tmp_path):
    spec = load_spec("mnist-mini")
    values = torch.full((1, 28, 28), 0.2)
    values[..., :, :5] = 0.9
    save_sigma(tmp_path / "s.pt", values, spec, method="anisotropic", init=0.2, sub_epoch=3)
    result = run_cli("visualize-sigma", tmp_path / "s.pt", tmp_path / "s.pt", "--out", tmp_path / "fig3")
    assert result.code == 0, result.stderr
    assert is_png(tmp_path / "fig3.png") and (tmp_path / "fig3.pdf").is_file()
    report = (tmp_path / "fig3-report.md").read_text()
    assert "mnist-mini, from σ = 0.2, sub-epoch 3" in report and "columns 0-6" in report
    wrong = run_cli("visualize-sigma", tmp_path / "s.pt", "--dataset", "cifar10", "--out", tmp_path / "x")
    assert wrong.code == 2 and "but cifar10 inputs are 3x32x32" in wrong.stderr


FIGURE_SETTINGS = [
    "--set",
    "optimize.init=0.2",
    "--set",
    "optimize.init_step=0.3",
    "--set",
    "optimize.inits=2",
    "--set",
    "optimize.sub_epochs=2",
    "--set",
    "optimize.steps_per_sub_epoch=3",
    "--set",
    "optimize.batch_size=16",
    "--set",
    "optimize.n0=4",
    "--set",
    "optimize.eval_max=30",
    "--set",
    "optimize.eval_n0=8",
    "--set",
    "optimize.eval_n=32",
    "--set",
    "certify.n0=10",
    "--set",
    "inputs.refine_steps=2",
    "--set",
    "inputs.bootstrap=200",
    "--set",
    "certify.n=60",
    "--set",
    "figures.certify_max=25",
]


def test_figures_pipeline_end_to_end_and_resumed(run_cli, trained_mini, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained_mini, runs / "mnist-mini" / "base")
    args = ["figures", "--runs-dir", runs, "--out", tmp_path / "figures", *FIGURE_SETTINGS]
    result = run_cli(*args)
    assert result.code == 0, result.stderr
    out = tmp_path / "figures" / "mnist-mini"
    expected = [f"fig1-certified-accuracy-{s}.{e}" for s in ("area", "radius", "gm-radius") for e in ("png", "pdf")]
    expected += [
        "fig2-clean-accuracy.png",
        "fig2-clean-accuracy-unfiltered.pdf",
        "fig3-sigma.png",
        "fig3-sigma-report.md",
        "table-certified-accuracy-log-area.md",
        "table-certified-accuracy-radius.tex",
    ]
    for name in expected:
        assert (out / name).is_file(), name
    # each chosen sigma (the front's ends and the headline point) is certified next to the isotropic sigma of
    # the same mean, on the report set
    headline = json.loads((out / "headline.json").read_text())
    also = headline["selection"]["chosen_file"]
    chosen = choose_sigmas(read_metrics(runs / "mnist-mini" / "optimize" / "figures"), 2, also)
    certified = sorted(p.name for p in (runs / "mnist-mini" / "certify").glob("figures-*.tsv"))
    assert chosen and len(certified) == 2 * len(chosen)
    assert sum(p.startswith("figures-iso-") for p in certified) == len(chosen)
    # ... on inputs disjoint from those that chose them, and the headline says which and how sure
    sweep = runs / "mnist-mini" / "optimize" / "figures"
    chosen_on = set(torch.load(sweep / chosen[0]["sigma_file"], weights_only=True)["chosen_on"]["indices"])
    for tsv in (runs / "mnist-mini" / "certify").glob("figures-*.tsv"):
        assert not {int(row["idx"]) for row in read_results(tsv)} & chosen_on
    assert headline["inputs"]["report"]["count"] == 25
    if headline["report"] and headline["report"]["gain"]:
        gain = headline["report"]["gain"]
        assert gain["low"] <= gain["estimate"] <= gain["high"]
    assert "| other inputs, refined reference" in (out / "headline.md").read_text() or not headline["report"]
    tables = (out / "table-certified-accuracy-log-area.md").read_text()
    assert "Differences (percentage points) on the same inputs, with 95% paired-bootstrap intervals" in tables
    assert tables.count("| optimized from σ =") == len(chosen) == tables.count("| isotropic, σ =")
    # a second run reuses every finished step
    before = {p: p.stat().st_mtime_ns for p in (runs / "mnist-mini").rglob("*.tsv")}
    assert run_cli(*args).code == 0
    assert {p: p.stat().st_mtime_ns for p in (runs / "mnist-mini").rglob("*.tsv")} == before


def test_figure_sigmas_come_from_the_pareto_front_near_the_best_accuracy():
    def row(accuracy, area, name):
        return {"method": "anisotropic", "accuracy": accuracy, "mean_log_area": area, "sigma_file": name}

    rows = [
        row(0.976, -746.5, "tied-but-dominated"),
        row(0.976, -607.6, "most-accurate"),
        row(0.972, -554.6, "dominated"),
        row(0.974, -549.3, "front"),
        row(0.966, -394.7, "largest-area"),
        row(0.70, -100.0, "too-inaccurate"),
        {"method": "isotropic", "accuracy": 0.99, "mean_log_area": 0.0},
    ]
    assert [r["sigma_file"] for r in choose_sigmas(rows, 2)] == ["most-accurate", "largest-area"]
    assert [r["sigma_file"] for r in choose_sigmas(rows, 3)] == ["most-accurate", "front", "largest-area"]
