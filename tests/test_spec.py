import json

import pytest

from nrs_cli.errors import NrsError
from nrs_cli.io.spec import builtin_specs, load_spec


def test_every_builtin_spec_loads_with_its_paper_shape():
    expected = {
        "mnist": (1, 28, 28),
        "fashion-mnist": (1, 28, 28),
        "mnist-mini": (1, 28, 28),
        "cifar10": (3, 32, 32),
        "imagenet": (3, 224, 224),
        "kitti": (3, 224, 224),
    }
    assert set(expected) <= set(builtin_specs())
    for name, shape in expected.items():
        spec = load_spec(name)
        assert spec.name == name
        assert spec.data.input_shape == shape
        assert len(spec.data.mean) == len(spec.data.std) == shape[0]


def test_extends_merges_sections_key_by_key():
    mini, mnist = load_spec("mnist-mini"), load_spec("mnist")
    assert mini.data.loader == "mnist-mini"
    assert mini.data.mean == mnist.data.mean  # inherited
    assert mini.optimize.n0 != mnist.optimize.n0  # overridden
    assert mini.certify == mnist.certify


def write(tmp_path, text, name="my.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_user_spec_file_extending_a_builtin(tmp_path):
    spec = load_spec(write(tmp_path, "extends: mnist-mini\nname: mine\ntrain:\n  epochs: 2\n"))
    assert (spec.name, spec.train.epochs, spec.data.loader) == ("mine", 2, "mnist-mini")
    assert spec.source.endswith("my.yaml")


def test_unknown_key_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "extends: mnist\ntrain:\n  epochz: 3\n")
    with pytest.raises(NrsError) as err:
        load_spec(path)
    assert "train.epochz" in str(err.value) and path in str(err.value)
    assert "epochs" in str(err.value)  # says what it expected


def test_wrong_type_names_the_key_and_the_file(tmp_path):
    path = write(tmp_path, "extends: mnist\ntrain:\n  epochs: five\n")
    with pytest.raises(NrsError, match=r"my\.yaml: train\.epochs: expected an integer, got 'five'"):
        load_spec(path)
    with pytest.raises(NrsError, match="engine.precision: expected one of fp32, bf16"):
        load_spec(write(tmp_path, "extends: mnist\nengine:\n  precision: fp8\n", "p.yaml"))
    with pytest.raises(NrsError, match="data.input_shape: expected a list"):
        load_spec(write(tmp_path, "extends: mnist\ndata:\n  input_shape: 784\n", "s.yaml"))


def test_missing_required_key(tmp_path):
    with pytest.raises(NrsError, match="missing key 'data'"):
        load_spec(write(tmp_path, "name: bare\n"))


def test_malformed_yaml_is_one_line_with_the_line_number(tmp_path):
    with pytest.raises(NrsError) as err:
        load_spec(write(tmp_path, "name: x\ntrain: [1, 2\nfoo: bar\n"))
    assert "malformed YAML" in str(err.value) and "line" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_dataset_lists_the_builtin_ones():
    with pytest.raises(NrsError, match="unknown dataset 'mnsit'.*mnist-mini"):
        load_spec("mnsit")


def test_overrides_replace_spec_values_and_are_validated():
    spec = load_spec("mnist-mini", {"train.epochs": 7, "engine.precision": "bf16", "figures.certify_max": None})
    assert spec.train.epochs == 7 and spec.engine.precision == "bf16"
    assert spec.figures.certify_max is None  # None sets null, as --set figures.certify_max=null does
    with pytest.raises(NrsError, match="command line: train.lr: expected a number, got None"):
        load_spec("mnist", {"train.lr": None})
    with pytest.raises(NrsError, match="command line: train.epochs: expected an integer"):
        load_spec("mnist", {"train.epochs": "many"})
    with pytest.raises(NrsError, match="command line: unknown key 'train.speed'"):
        load_spec("mnist", {"train.speed": 3})


def test_digest_changes_with_the_spec_and_ignores_the_source(tmp_path):
    a = load_spec("mnist")
    b = load_spec(write(tmp_path, "extends: mnist\n"))
    assert a.digest() == b.digest()
    assert a.digest() != load_spec("mnist", {"seed": 1}).digest()
    assert a.digest("data", "model") == load_spec("mnist", {"seed": 1}).digest("data", "model")
    json.dumps(a.to_dict())  # manifests need plain data


def test_cli_named_option_beats_set_beats_file(run_cli, tmp_path):
    runs = tmp_path / "runs"
    common = ["train-base", "--runs-dir", runs, "--train-size", 64, "--set", "data.test_size=50"]
    assert run_cli(*common, "--name", "a", "--set", "train.epochs=0").code == 0
    assert run_cli(*common, "--name", "b", "--set", "train.epochs=3", "--epochs", "0").code == 0
    for name in ("a", "b"):
        manifest = json.loads((runs / "mnist-mini" / name / "manifest.json").read_text())
        assert manifest["spec"]["train"]["epochs"] == 0
        assert manifest["spec"]["data"]["test_size"] == 50


def test_cli_spec_errors_exit_2_with_one_line(run_cli, tmp_path):
    result = run_cli("train-base", "--dataset", write(tmp_path, "extends: mnist\nmodel:\n  arch: [x]\n"))
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0 and "model.arch" in result.stderr
    result = run_cli("train-base", "--set", "train.epochs")
    assert result.code == 2 and "KEY=VALUE" in result.stderr
