"""Specification of KL weight schedules and controllers (``klexp.core.schedules``,
``klexp.core.controllers``).

Expected values are written out by hand from each paper's formula; ``step`` counts optimiser steps
from 0 (the paper's ``t`` is ``step + 1`` where a paper counts from 1).
"""

from __future__ import annotations

import math

import pytest

from klexp.core import (
    AdaptiveBeta,
    Constant,
    Cyclical,
    LinearWarmup,
    ProportionalController,
    Schedule,
    as_schedule,
)
from klexp.core.controllers import Controller
from klexp.errors import ConfigValueError


def values(schedule: Schedule, steps: list[int]) -> list[float]:
    return [schedule.value(step) for step in steps]


def test_constant():
    assert values(Constant(0.25), [0, 1, 10**6]) == [0.25, 0.25, 0.25]
    assert Constant().value(3) == 1.0


def test_linear_warmup_rises_from_start_to_end_after_the_delay():
    """β(t) = start + (end − start) · clip((t − delay) / steps, 0, 1)."""
    schedule = LinearWarmup(steps=10, start=0.0, end=1.0, delay=5)
    steps = [0, 5, 6, 10, 14, 15, 16, 1000]
    assert values(schedule, steps) == pytest.approx([0.0, 0.0, 0.1, 0.5, 0.9, 1.0, 1.0, 1.0])
    decay = LinearWarmup(steps=4, start=2.0, end=0.0)
    assert values(decay, [0, 1, 2, 4, 9]) == pytest.approx([2.0, 1.5, 1.0, 0.0, 0.0])


def test_cyclical_follows_fu_et_al_2019_with_four_cycles():
    """Fu et al. 2019, eq. 5: τ = mod(t − 1, ⌈T/M⌉) / (T/M); β = τ/R while τ ≤ R, else 1.
    T = 100, M = 4, R = 0.5: cycles of 25 steps, rising over the first 12.5 of each."""
    schedule = Cyclical(total_steps=100, cycles=4, ratio=0.5)
    expected = {
        0: 0.0,      # τ = 0
        5: 0.4,      # τ = 5/25 = 0.2 → 0.2/0.5
        12: 0.96,    # τ = 0.48 → 0.96
        13: 1.0,     # τ = 0.52 > R: held at 1
        24: 1.0,     # last step of the first cycle
        25: 0.0,     # second cycle restarts
        30: 0.4,
        37: 0.96,
        38: 1.0,
        99: 1.0,     # last step of training
    }
    assert values(schedule, list(expected)) == pytest.approx(list(expected.values()))


def test_cyclical_with_a_fractional_cycle_length_and_a_range():
    """T = 10, M = 3: T/M = 10/3, ⌈T/M⌉ = 4 steps per cycle; R = 0.5; β in [0.2, 1.2]."""
    schedule = Cyclical(total_steps=10, cycles=3, ratio=0.5, low=0.2, high=1.2)
    # τ at steps 0..4: 0, 0.3, 0.6, 0.9, then 0 again (mod 4).
    # f(τ): 0, 0.6, 1, 1, 0  →  β = 0.2 + 1.0·f(τ).
    assert values(schedule, [0, 1, 2, 3, 4, 5, 8, 9]) == pytest.approx(
        [0.2, 0.8, 1.2, 1.2, 0.2, 0.8, 0.2, 0.8])


def test_cyclical_with_ratio_one_rises_over_the_whole_cycle():
    schedule = Cyclical(total_steps=8, cycles=2, ratio=1.0)
    assert values(schedule, [0, 1, 2, 3, 4, 7]) == pytest.approx([0.0, 0.25, 0.5, 0.75, 0.0, 0.75])


def test_schedules_depend_on_the_step_only_and_controllers_on_the_measured_kl():
    """Two types: a schedule has no state and nothing to update (it resumes from the trainer's
    step alone); a controller carries β and adapts it."""
    for schedule in (Constant(0.5), LinearWarmup(10), Cyclical(100)):
        assert isinstance(schedule, Schedule) and not isinstance(schedule, Controller)
        assert not hasattr(schedule, "update") and not hasattr(schedule, "state_dict")
    for controller in (AdaptiveBeta(target=0.1), ProportionalController(target=0.1, horizon=10)):
        assert isinstance(controller, Controller) and not isinstance(controller, Schedule)
        assert controller.adapt_to == "after_update"


def test_adaptive_beta_doubles_and_halves_per_the_ppo_paper():
    """Schulman et al. 2017, sec. 4: d < d_targ/1.5 → β/2; d > 1.5·d_targ → β·2; else unchanged."""
    controller = AdaptiveBeta(target=0.01, initial=1.0)
    trace = []
    for measured in [0.02, 0.02, 0.012, 0.009, 0.005, 0.001, 0.0, 0.0151]:
        controller.update(measured)
        trace.append(controller.value())
    assert trace == [2.0, 4.0, 4.0, 4.0, 2.0, 1.0, 0.5, 1.0]


def test_adaptive_beta_keeps_a_positive_floor_so_it_can_always_grow_again():
    """Halving without a floor reaches exactly 0 after ~1,075 quiet phases, and 0 doubles to 0."""
    unbounded_beta = 1.0
    for _ in range(1100):
        unbounded_beta /= 2.0
    assert unbounded_beta == 0.0
    controller = AdaptiveBeta(target=0.01, initial=1.0)
    for _ in range(1100):
        controller.update(0.0)
    assert controller.value() == 1e-6
    controller.update(1.0)
    assert controller.value() == 2e-6
    for _ in range(100):
        controller.update(1.0)
    assert controller.value() == 1e6


def test_adaptive_beta_leaves_beta_unchanged_exactly_at_the_boundaries():
    controller = AdaptiveBeta(target=0.03, initial=0.5)
    controller.update(0.03 * 1.5)
    controller.update(0.03 / 1.5)
    assert controller.value() == 0.5


def test_adaptive_beta_respects_its_bounds_and_custom_factor():
    controller = AdaptiveBeta(target=1.0, initial=1.0, tolerance=2.0, factor=3.0,
                              min_value=0.2, max_value=5.0)
    controller.update(2.5)     # > 2·target → ×3
    assert controller.value() == 3.0
    controller.update(2.5)     # 9 → clipped to 5
    assert controller.value() == 5.0
    controller.update(1.5)     # within [target/2, 2·target] → unchanged
    assert controller.value() == 5.0
    for _ in range(4):
        controller.update(0.1)  # 5/3, 5/9, 0.2 (clipped), 0.2
    assert controller.value() == pytest.approx(0.2)


def test_proportional_controller_follows_ziegler_et_al():
    """Ziegler et al. 2019, sec. 2.2: e = clip(KL/target − 1, −0.2, 0.2), β ← β(1 + e·n/horizon).
    With target 6 nats, horizon 10 000 and batch size n = 512: K = n/horizon = 0.0512."""
    controller = ProportionalController(target=6.0, horizon=10_000, batch_size=512, initial=0.15)
    controller.update(6.0)             # e = 0: unchanged
    assert controller.value() == 0.15
    controller.update(6.6)             # e = 0.1 → ×1.00512
    assert controller.value() == pytest.approx(0.15 * 1.00512, rel=1e-12)
    controller.update(60.0)            # e = 9, clipped to 0.2 → ×1.01024
    assert controller.value() == pytest.approx(0.15 * 1.00512 * 1.01024, rel=1e-12)
    controller.update(0.0)             # e = −1, clipped to −0.2 → ×0.98976
    assert controller.value() == pytest.approx(0.15 * 1.00512 * 1.01024 * 0.98976, rel=1e-12)
    controller.update(4.2)             # e = −0.3 → clipped to −0.2
    assert controller.value() == pytest.approx(0.15 * 1.00512 * 1.01024 * 0.98976**2, rel=1e-12)


def test_proportional_controller_with_a_custom_error_clip():
    controller = ProportionalController(target=1.0, horizon=10.0, initial=1.0, error_clip=0.5)
    controller.update(3.0)  # e = 2 → 0.5 → ×(1 + 0.5/10)
    assert controller.value() == pytest.approx(1.05)


@pytest.mark.parametrize(
    "controller",
    [AdaptiveBeta(target=0.01, initial=0.3), ProportionalController(target=6.0, horizon=10.0, initial=0.3)],
    ids=["adaptive", "proportional"],
)
def test_controllers_leave_beta_unchanged_on_a_nan_measurement(controller):
    """NaN says nothing about the KL's side of the target (a term with check_finite=False can
    pass one on): neither controller may read it as "far below target"."""
    controller.update(math.nan)
    assert controller.value() == 0.3


@pytest.mark.parametrize(
    "make",
    [
        lambda: AdaptiveBeta(target=0.01, initial=1.0),
        lambda: ProportionalController(target=6.0, horizon=100.0, batch_size=4, initial=0.1),
    ],
    ids=["adaptive", "proportional"],
)
def test_controller_state_round_trips(make):
    controller = make()
    for measured in (0.5, 0.001, 7.0, 0.02):
        controller.update(measured)
    state = controller.state_dict()
    restored = make()
    restored.load_state_dict(state)
    assert restored.value() == controller.value()
    assert restored.state_dict() == state
    # Both continue identically.
    for measured in (0.3, 0.0, 9.0):
        controller.update(measured)
        restored.update(measured)
        assert restored.value() == controller.value()


def test_as_schedule_turns_a_number_into_a_constant_and_passes_schedules_through():
    schedule = as_schedule(0.3)
    assert isinstance(schedule, Constant) and schedule.value(5) == 0.3
    warmup = LinearWarmup(10)
    assert as_schedule(warmup) is warmup
    with pytest.raises(ConfigValueError) as error:
        as_schedule(-1.0)
    assert error.value.key == "value"


BAD_ARGUMENTS = [
    (Constant, {"value": -1.0}, "value"),
    (Constant, {"value": math.nan}, "value"),
    (LinearWarmup, {"steps": 0}, "steps"),
    (LinearWarmup, {"steps": 2.5}, "steps"),
    (LinearWarmup, {"steps": 10, "start": -0.1}, "start"),
    (LinearWarmup, {"steps": 10, "end": -1}, "end"),
    (LinearWarmup, {"steps": 10, "delay": -3}, "delay"),
    (Cyclical, {"total_steps": 0}, "total_steps"),
    (Cyclical, {"total_steps": 100, "cycles": 0}, "cycles"),
    (Cyclical, {"total_steps": 100, "ratio": 0.0}, "ratio"),
    (Cyclical, {"total_steps": 100, "ratio": 1.5}, "ratio"),
    (Cyclical, {"total_steps": 100, "ratio": math.nan}, "ratio"),
    (Cyclical, {"total_steps": 100, "high": -1.0}, "high"),
    (Cyclical, {"total_steps": 100, "low": -1.0}, "low"),
    (AdaptiveBeta, {"target": 0.0}, "target"),
    (AdaptiveBeta, {"target": -0.01}, "target"),
    (AdaptiveBeta, {"target": 0.01, "initial": -1.0}, "initial"),
    (AdaptiveBeta, {"target": 0.01, "tolerance": 0.5}, "tolerance"),
    (AdaptiveBeta, {"target": 0.01, "factor": 1.0}, "factor"),
    (AdaptiveBeta, {"target": 0.01, "min_value": -1.0}, "min_value"),
    (AdaptiveBeta, {"target": 0.01, "min_value": 0.0}, "min_value"),
    (AdaptiveBeta, {"target": 0.01, "min_value": 2.0, "max_value": 1.0}, "max_value"),
    (ProportionalController, {"target": 0.0, "horizon": 10.0}, "target"),
    (ProportionalController, {"target": 6.0, "horizon": 0.0}, "horizon"),
    (ProportionalController, {"target": 6.0, "horizon": 10.0, "batch_size": 0}, "batch_size"),
    (ProportionalController, {"target": 6.0, "horizon": 10.0, "initial": -0.1}, "initial"),
    (ProportionalController, {"target": 6.0, "horizon": 10.0, "error_clip": 0.0}, "error_clip"),
    (ProportionalController, {"target": 6.0, "horizon": 10.0, "adapt_to": "later"}, "adapt_to"),
    (AdaptiveBeta, {"target": 0.01, "adapt_to": "batches"}, "adapt_to"),
]


@pytest.mark.parametrize(("cls", "kwargs", "key"), BAD_ARGUMENTS,
                         ids=[f"{cls.__name__}-{key}-{i}" for i, (cls, _, key) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_raise_config_value_error_naming_the_argument(cls, kwargs, key):
    with pytest.raises(ConfigValueError) as error:
        cls(**kwargs)
    assert error.value.key == key
    assert str(error.value).startswith(f"{key}:")
