"""The start-up check of a composed config against its classes' type hints: klexp's own, and
Lightning's and torch's (Trainer, callbacks, loggers, optimisers). A wrong type fails with the key's
full path; what the checker cannot judge is accepted; NaN is no setting anywhere."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from klexp.app.cli import register_resolvers
from klexp.app.config_checks import ConfigError, check_config, check_run_settings

register_resolvers()

# text without "$" or braces: an interpolation is not a value
ANY_SCALAR = st.one_of(st.integers(), st.floats(), st.booleans(), st.text("abz 0.9-", max_size=5), st.none())


def node(target: str, values: dict):
    return OmegaConf.create({"_target_": target, **values})


def problem(cfg) -> str | None:
    try:
        check_config(cfg)
    except ConfigError as error:
        return str(error)
    return None


@settings(deadline=None)  # the first example imports Lightning
@given(ANY_SCALAR)
def test_an_integer_argument_of_a_lightning_callback_takes_integers_only(value):
    cfg = OmegaConf.create({"checkpoint": {"_target_": "pytorch_lightning.callbacks.ModelCheckpoint",
                                           "save_top_k": value}})
    accepted = problem(cfg) is None
    assert accepted == (type(value) is int)
    if not accepted:
        assert problem(cfg).startswith("checkpoint.save_top_k: ")


@settings(deadline=None)  # the first example imports Lightning
@given(ANY_SCALAR)
def test_a_number_argument_takes_every_int_and_float_but_nan(value):
    """Infinity passes the type check: whether a key may be infinite is its class's decision."""
    cfg = OmegaConf.create({"lr_schedule": {"_target_": "torch.optim.lr_scheduler.LinearLR",
                                            "start_factor": value}})
    is_number = type(value) in (int, float) and not (isinstance(value, float) and math.isnan(value))
    assert (problem(cfg) is None) == is_number


def test_a_literal_choice_is_matched_with_its_type():
    """``True == 1`` in Python; a Literal of numbers still refuses true."""
    assert problem(node("pytorch_lightning.Trainer", {"precision": 16})) is None
    assert problem(node("pytorch_lightning.Trainer", {"precision": "16-mixed"})) is None
    assert problem(node("pytorch_lightning.Trainer", {"precision": True})) == (
        "precision: expected one of 64, 32, 16, transformer-engine, transformer-engine-float16, "
        "16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, bf16, got True")


@pytest.mark.parametrize(
    ("target", "values", "message"),
    [("pytorch_lightning.Trainer", {"devices": 1.5},
      "devices: expected a list, a string or an integer, got 1.5"),
     ("pytorch_lightning.Trainer", {"max_time": 5},
      "max_time: expected a string, a timedelta config (with _target_) or a mapping, got 5"),
     ("pytorch_lightning.Trainer", {"accelerator": 3},
      "accelerator: expected a string or an Accelerator config (with _target_), got 3"),
     ("pytorch_lightning.Trainer", {"fast_dev_run": "x"},
      "fast_dev_run: expected an integer or true or false, got 'x'"),
     ("torch.optim.Adam", {"betas": [0.9]}, "betas: expected a list of 2 items, got [0.9]"),
     ("torch.optim.Adam", {"betas": [0.9, "x"]}, "betas: list item 'x': expected a number or a Tensor "
                                                 "config (with _target_), got 'x'")],
)
def test_a_wrong_type_for_a_lightning_or_torch_class_says_what_the_hint_accepts(target, values, message):
    assert problem(node(target, values)) == message


@pytest.mark.parametrize(
    ("target", "values"),
    [("pytorch_lightning.Trainer", {"logger": ["any", "thing"]}),  # Iterable[Logger]: not judged
     ("pytorch_lightning.Trainer", {"devices": [0, 1], "precision": "bf16-mixed", "max_time": "00:01:00"}),
     ("pytorch_lightning.callbacks.RichProgressBar", {"theme": {"description": "green"}}),
     ("pytorch_lightning.callbacks.ModelCheckpoint",
      {"train_time_interval": {"_target_": "datetime.timedelta", "minutes": 30}}),
     ("pytorch_lightning.loggers.TensorBoardLogger", {"save_dir": ".", "flush_secs": 5}),  # **kwargs
     ("klexp.AdaptiveBeta", {"target": 0.01, "max_value": math.inf})],
)
def test_values_the_hints_allow_or_cannot_judge_are_accepted(target, values):
    assert problem(node(target, values)) is None


def test_nan_is_named_where_it_is_written_not_where_it_is_interpolated():
    cfg = OmegaConf.create({"kl": {"weight": "${alpha}"}, "alpha": math.nan})
    assert problem(cfg) == "alpha: expected a number, got nan"


def test_nan_made_by_a_resolver_is_named_at_its_key():
    cfg = OmegaConf.create({"schedule": {"values": [1.0, "${mul:0,inf}"]}})
    assert problem(cfg) == "schedule.values[1]: expected a number, got nan"


def run_settings_problem(values: dict) -> str | None:
    try:
        check_run_settings(OmegaConf.create({"seed": 0, "test": True, **values}))
    except ConfigError as error:
        return str(error)
    return None


@settings(deadline=None)
@given(st.integers(min_value=-2**40, max_value=2**40))
def test_the_seed_is_taken_in_the_range_lightning_seeds_numpy_with(seed):
    accepted = run_settings_problem({"seed": seed}) is None
    assert accepted == (0 <= seed <= 2**32 - 1)
    if not accepted:
        assert run_settings_problem({"seed": seed}) == (
            f"seed: expected an integer in [0, 4294967295], got {seed}")


@pytest.mark.parametrize("key", ["seed", "objective", "threads", "ckpt_path"])
def test_an_unresolvable_interpolation_in_a_top_level_key_is_named(key):
    assert run_settings_problem({key: "${nowhere}"}) == (
        f"{key}: cannot resolve Interpolation key 'nowhere' not found")
