"""The direction of a KL term is a type: ``Forward`` and ``Reverse`` hold an estimator and a
per-dimension log, ``JensenShannon`` holds neither, so a wrong combination cannot be written; the
config's shorthand (``direction: reverse`` beside ``estimator: k3``) composes to the same objects."""

from __future__ import annotations

import copy
import inspect
import pickle

import pytest
import torch
from helpers import compose_config
from torch.distributions import Independent, Normal

import klexp
from klexp.app.runner import build_terms
from klexp.core.directions import Forward, JensenShannon, Reverse, as_direction
from klexp.core.estimate import ClosedForm, MonteCarlo, OnSamples
from klexp.core.shaping import Capacity, FreeBits
from klexp.errors import ConfigValueError, KlexpError
from klexp.lightning.from_config import kl_term
from klexp.lightning.term import KLMeasure, KLPenalty, KLTerm, MeasureOptions


def test_jensen_shannon_has_no_estimator_and_no_per_dimension_log_to_give():
    with pytest.raises(TypeError):
        JensenShannon(estimator="k3")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        JensenShannon(log_dims=True)  # type: ignore[call-arg]
    assert JensenShannon().estimator.name == "analytic"


@pytest.mark.parametrize(("given", "key", "message"), [
    ({"estimator": "k3"}, "estimator",
     "Jensen–Shannon has no k1/k2/k3 estimator; use estimator=analytic, got 'k3'"),
    ({"estimator": OnSamples("actions")}, "estimator", "Jensen–Shannon has no k1/k2/k3 estimator"),
    ({"log_dims": True}, "log_dims", "Jensen–Shannon does not split over dimensions"),
])
def test_the_js_shorthand_refuses_what_jensen_shannon_does_not_take_in_one_line(given, key, message):
    with pytest.raises(ConfigValueError) as error:
        as_direction("js", **given)
    assert error.value.key == key and message in str(error.value) and "\n" not in str(error.value)


def test_a_direction_object_holds_its_own_estimator():
    with pytest.raises(ConfigValueError) as error:
        KLTerm("prior", p="posterior", q="prior", direction=Reverse("k3"), estimator="k1")
    assert error.value.key == "estimator"
    with pytest.raises(ConfigValueError) as error:
        KLTerm("prior", p="posterior", q="prior", direction=Forward(), log_dims=True)
    assert error.value.key == "log_dims"
    with pytest.raises(ConfigValueError) as error:
        Forward(log_dims="yes")  # type: ignore[arg-type]
    assert error.value.key == "log_dims"


@pytest.mark.parametrize(("shorthand", "direction"), [
    ({}, Forward()),
    ({"direction": "forward", "estimator": "analytic"}, Forward(ClosedForm())),
    ({"direction": "reverse", "estimator": "k3"}, Reverse(MonteCarlo("k3"))),
    ({"direction": "reverse", "estimator": MonteCarlo("k1", 8), "log_dims": True},
     Reverse(MonteCarlo("k1", 8), log_dims=True)),
    ({"direction": "js"}, JensenShannon()),
    ({"direction": "js", "estimator": "analytic"}, JensenShannon()),
])
def test_the_terms_keyword_shorthand_builds_the_direction_object(shorthand, direction):
    term = KLTerm("prior", p="posterior", q="prior", **shorthand)
    assert repr(term.direction) == repr(direction)
    assert repr(KLTerm("prior", p="posterior", q="prior", direction=direction).direction) == repr(direction)


def test_a_direction_object_measures_what_its_shorthand_measures():
    outputs = {"posterior": Independent(Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.5), 1),
               "prior": Independent(Normal(torch.zeros(4, 3), torch.ones(4, 3)), 1)}
    torch.manual_seed(0)
    by_shorthand = KLTerm("prior", p="posterior", q="prior", direction="reverse", estimator="k3")(
        outputs, "train", 0)
    torch.manual_seed(0)
    by_object = KLTerm("prior", p="posterior", q="prior", direction=klexp.Reverse(klexp.MonteCarlo("k3")))(
        outputs, "train", 0)
    assert torch.equal(by_shorthand, by_object)
    assert KLTerm("x", p="a", q="b", direction=Reverse("k1")).sampled == "b"
    assert KLTerm("x", p="a", q="b", direction=Forward("k1")).sampled == "a"


def test_a_shaping_holds_the_divergence_it_shapes_and_free_bits_only_a_kl():
    """Free bits floor each dimension's KL; the Jensen–Shannon divergence of two products is not a
    sum over dimensions, so ``FreeBits`` takes a KL direction and a JS free-bits term cannot be
    written (a capacity of JS can)."""
    with pytest.raises(ConfigValueError) as error:
        FreeBits(0.1, of=JensenShannon())
    assert error.value.key == "of" and "does not split over dimensions" in str(error.value)
    floored = KLTerm("prior", p="posterior", q="prior", direction=FreeBits(0.1, of=Reverse("k1")))
    assert repr(floored.direction) == repr(Reverse("k1")) and floored.sampled == "prior"
    assert isinstance(floored.shaping, FreeBits) and floored.shaping.nats == 0.1
    js = KLTerm("fit", p="a", q="b", direction=Capacity(1.0, of=JensenShannon()))
    assert isinstance(js.direction, JensenShannon) and isinstance(js.shaping, Capacity)
    assert "shaping" not in inspect.signature(KLTerm).parameters
    with pytest.raises(ConfigValueError) as error:
        KLPenalty("ref", "policy", "reference", FreeBits(0.1))  # only a loss term weights a shaping
    assert error.value.key == "direction"


@pytest.mark.parametrize("copied", [copy.copy, copy.deepcopy, lambda s: pickle.loads(pickle.dumps(s))],
                         ids=["copy", "deepcopy", "pickle"])
def test_whether_a_shaping_names_its_divergence_survives_a_copy(copied):
    """A config's term applies its own direction to a shaping that names none (``kl_term``); a
    copied one (a launcher's worker unpickles its config) must still say whether it named one."""
    assert not copied(FreeBits(0.1)).names_its_divergence
    assert copied(FreeBits(0.1, of=Reverse("k3"))).names_its_divergence
    assert repr(copied(FreeBits(0.1))) == "FreeBits(nats=0.1)"
    term = kl_term("prior", "posterior", "prior", direction="reverse", estimator="k3",
                   shaping=copied(FreeBits(0.1)))
    assert repr(term.direction) == repr(Reverse("k3"))


def test_the_config_converter_builds_the_same_direction_from_flat_keys():
    term = kl_term("fit", "target", "model", direction="reverse", estimator="k1", num_samples=4,
                   log_dims=True)
    assert repr(term.direction) == repr(Reverse(MonteCarlo("k1", 4), log_dims=True))
    penalty = kl_term("ref", "policy", "reference", placement="reward", direction="js")
    assert isinstance(penalty, KLPenalty) and isinstance(penalty.direction, JensenShannon)
    node = kl_term("fit", "target", "model", direction=Reverse("k3"))
    assert repr(node.direction) == repr(Reverse("k3"))


@pytest.mark.parametrize(("overrides", "direction"), [
    (["experiment=fit_gaussian"], Forward(MonteCarlo("k1", 512))),
    (["experiment=fit_gaussian", "kl.fit.direction=reverse"], Reverse(MonteCarlo("k1", 512))),
    (["experiment=vae"], Forward(ClosedForm(), log_dims=True)),
])
def test_a_yaml_direction_shorthand_composes_to_the_direction_object(overrides, direction, tmp_path):
    (term,) = build_terms(compose_config(overrides, output_dir=tmp_path).kl)
    assert repr(term.direction) == repr(direction)


def test_a_yaml_js_with_a_monte_carlo_estimator_is_one_line_naming_the_estimator(tmp_path):
    cfg = compose_config(["experiment=fit_gaussian", "kl.fit.direction=js"], output_dir=tmp_path)
    with pytest.raises(KlexpError) as error:
        build_terms(cfg.kl)
    assert str(error.value) == ("kl.fit.estimator: Jensen–Shannon has no k1/k2/k3 estimator; "
                                "use estimator=analytic, got 'k1'")


def test_the_shared_options_are_klmeasures_arguments_after_direction():
    parameters = list(inspect.signature(KLMeasure.__init__).parameters)
    assert list(MeasureOptions.__annotations__) == parameters[parameters.index("direction") + 1:]
