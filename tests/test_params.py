"""helpers.experiments.params: bad papermill values (validate_parameters) and bad values of the
command lines (the checkers) stop the run with a clear ValueError."""

from __future__ import annotations

import pytest

from helpers.experiments.params import (
    SMOKE_ENV,
    ParameterError,
    check_integer,
    check_number,
    validate_ablation_parameters,
    validate_parameters,
)

# Pure Python parameter checks: the same with any versions.
pytestmark = pytest.mark.versionless


@pytest.fixture(autouse=True)
def _no_smoke_env(monkeypatch):
    """A TAPE_VS_FIT_SMOKE set in the shell (as for nbval) must not shrink these tests' values."""
    monkeypatch.delenv(SMOKE_ENV, raising=False)


VALID = dict(epochs=3, batch_size=32, seed=0, subset=1000, folds=5, dataset="mnist",
             methods=["fit", "naive", "matched"])


def _refused(name, value, **changes):
    """validate_parameters(VALID with changes) raises ValueError naming `name` and `value`."""
    with pytest.raises(ValueError) as info:
        validate_parameters(**{**VALID, **changes})
    message = str(info.value)
    assert f"{name}={value!r}" in message, message
    return message


@pytest.mark.parametrize("name, value", [
    ("folds", 1),
    ("folds", 0),
    ("epochs", 0),
    ("epochs", -1),
    ("batch_size", 0),
    ("seed", -1),
    ("dataset", "cifar"),
    ("methods", ["bogus"]),
    ("methods", ["fit", "bogus"]),
    ("methods", []),
    ("methods", "fit"),
    ("epochs", 2.5),
    ("epochs", 2.0),
    ("epochs", "3"),
    ("epochs", True),
    ("batch_size", True),
    ("folds", False),
    ("subset", 60001),
    ("subset", 2.5),
])
def test_bad_value_is_refused(name, value):
    _refused(name, value, **{name: value})


def test_subset_must_give_every_class_an_image_in_every_fold():
    _refused("subset", 49, subset=49, folds=5, batch_size=8)
    checked = validate_parameters(**{**VALID, "subset": 50, "folds": 5, "batch_size": 8})
    assert checked["subset"] == 50
    # Without folds, at least 10 x 2.
    _refused("subset", 19, subset=19, folds=None, batch_size=4)
    assert validate_parameters(**{**VALID, "subset": 20, "folds": None, "batch_size": 4})


def test_batch_size_at_most_the_training_images():
    # 1000 images in 5 folds: every fold trains on 800.
    assert validate_parameters(**{**VALID, "batch_size": 800})["batch_size"] == 800
    _refused("batch_size", 801, batch_size=801)
    # 1003 images in 5 folds: the largest fold has 201 images, so training sets have >= 802.
    assert validate_parameters(**{**VALID, "subset": 1003, "batch_size": 802})["batch_size"] == 802
    _refused("batch_size", 803, subset=1003, batch_size=803)
    # The whole pool (subset 0) with the default single split: 60000 - 12000.
    assert validate_parameters(epochs=1, batch_size=48000, subset=0)["batch_size"] == 48000
    _refused("batch_size", 48001, subset=0, folds=None, batch_size=48001)


def test_subset_limits_are_inclusive():
    assert validate_parameters(**{**VALID, "subset": 60000})["subset"] == 60000


def test_valid_parameters_come_back_as_a_dict():
    checked = validate_parameters(**VALID, results_dir="results/x", resume=True)
    assert checked == {
        "epochs": 3, "batch_size": 32, "seed": 0, "subset": 1000, "folds": 5,
        "dataset": "mnist", "methods": ["fit", "naive", "matched"],
        "results_dir": "results/x", "resume": True,
    }


def test_optional_parameters_are_left_out_when_not_given():
    assert validate_parameters(epochs=1, batch_size=64) == {
        "epochs": 1, "batch_size": 64, "seed": 0, "subset": None, "dataset": "mnist",
    }


def test_subset_zero_means_everything():
    assert validate_parameters(**{**VALID, "subset": 0})["subset"] is None
    assert validate_parameters(**{**VALID, "subset": None})["subset"] is None


def test_methods_tuple_becomes_a_list():
    assert validate_parameters(**{**VALID, "methods": ("naive",)})["methods"] == ["naive"]


def test_smoke_test_shrinks_the_run(monkeypatch, capsys):
    monkeypatch.setenv(SMOKE_ENV, "1")
    checked = validate_parameters(epochs=30, batch_size=64, seed=1, subset=0, folds=10,
                                  methods=["fit"])
    assert checked == {"epochs": 2, "batch_size": 64, "seed": 1, "subset": 600, "folds": 2,
                       "dataset": "mnist", "methods": ["fit"]}
    assert SMOKE_ENV in capsys.readouterr().out


def test_smoke_test_never_enlarges(monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    checked = validate_parameters(epochs=1, batch_size=16, subset=200, folds=2)
    assert (checked["epochs"], checked["subset"], checked["folds"]) == (1, 200, 2)
    checked = validate_parameters(epochs=5, batch_size=16)  # no folds: stays absent
    assert "folds" not in checked and checked["subset"] == 600 and checked["epochs"] == 2


def test_smoke_test_still_validates(monkeypatch):
    monkeypatch.setenv(SMOKE_ENV, "1")
    _refused("epochs", 0, epochs=0)
    _refused("methods", ["bogus"], methods=["bogus"])


@pytest.mark.parametrize("setting", ["", "0"])
def test_smoke_test_off(monkeypatch, setting):
    monkeypatch.setenv(SMOKE_ENV, setting)
    checked = validate_parameters(**{**VALID, "epochs": 30, "subset": 0})
    assert (checked["epochs"], checked["subset"], checked["folds"]) == (30, None, 5)


@pytest.mark.parametrize("value, allowed", [
    (0, "it must be from 1 to 3"),
    (4, "it must be from 1 to 3"),
    (2.0, "it must be a whole number (an int), got float"),
    (True, "it must be a whole number (an int), got bool"),
])
def test_check_integer_names_parameter_value_and_what_is_allowed(value, allowed):
    with pytest.raises(ParameterError) as info:
        check_integer("workers", value, 1, 3)
    assert str(info.value) == f"parameter workers={value!r} is not allowed: {allowed}"


def test_check_integer_returns_the_value():
    assert check_integer("seed", 7, 0) == 7
    assert check_integer("folds", 3, 2, 3) == 3


@pytest.mark.parametrize("value, bounds, allowed", [
    (0, dict(above=0), "it must be > 0"),
    (-1.5, dict(above=0), "it must be > 0"),
    (1, dict(minimum=0, below=1), "it must be >= 0 and < 1"),
    (-0.1, dict(minimum=0, below=1), "it must be >= 0 and < 1"),
    (float("nan"), dict(minimum=0), "it must be >= 0"),
    ("5", dict(above=0), "it must be a number, got str"),
    (True, dict(above=0), "it must be a number, got bool"),
])
def test_check_number_names_parameter_value_and_what_is_allowed(value, bounds, allowed):
    with pytest.raises(ParameterError) as info:
        check_number("timeout", value, **bounds)
    assert str(info.value) == f"parameter timeout={value!r} is not allowed: {allowed}"


def test_check_number_accepts_ints_and_floats_within_bounds():
    assert check_number("timeout", 300, above=0) == 300
    assert check_number("dropout", 0.0, minimum=0, below=1) == 0.0


def test_distributed_parameters_use_the_same_checks():
    from helpers.tooling.launcher import validate_distributed_parameters

    validate_distributed_parameters(train_images=64, val_images=16, workers=2, timeout=60)
    with pytest.raises(ParameterError, match="parameter workers=1 is not allowed: it must be >= 2"):
        validate_distributed_parameters(train_images=64, val_images=16, workers=1, timeout=60)
    with pytest.raises(ParameterError, match="parameter timeout=0 is not allowed: it must be > 0"):
        validate_distributed_parameters(train_images=64, val_images=16, workers=2, timeout=0)


def test_ablation_parameters(tmp_path):
    (tmp_path / "settings.json").write_text("{}\n")
    checked = validate_ablation_parameters(ablation_folds=2, folds=2, full_scale_dir=tmp_path,
                                           baseline_dir=str(tmp_path))
    assert checked == {"ablation_folds": 2, "full_scale_dir": tmp_path, "baseline_dir": tmp_path}
    with pytest.raises(ParameterError, match="parameter ablation_folds=3 .* from 1 to 2"):
        validate_ablation_parameters(ablation_folds=3, folds=2, full_scale_dir=tmp_path,
                                     baseline_dir=tmp_path)
    empty = tmp_path / "empty"
    with pytest.raises(ParameterError, match=f"parameter baseline_dir={str(empty)!r} .* settings"):
        validate_ablation_parameters(ablation_folds=1, folds=2, full_scale_dir=tmp_path,
                                     baseline_dir=empty)
