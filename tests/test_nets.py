"""Networks come from the config: a task completes a ``_partial_: true`` node with the data's
sizes, a user's own ``nn.Module`` stands in for klexp's MLP, and a checkpoint's network (a
teacher, a baseline) is rebuilt from the file, also from checkpoints written before."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from helpers import FAST, compose_config, run_experiment
from toy_nets import ResidualMLP

from klexp.app.runner import instantiate_node
from klexp.errors import ConfigValueError, KlexpError
from klexp.nets.frozen import CHECKPOINT_NET_KEY, load_classifier
from klexp.nets.mlp import MLP
from klexp.tasks.classification import ClassificationTask


def test_a_classifier_defined_in_tests_is_trained_and_rebuilt_frozen_from_its_checkpoint(tmp_path):
    run_experiment(["data=synthetic", "task.net._target_=toy_nets.ResidualMLP", "test=false", *FAST],
                   tmp_path)
    path = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    spec = checkpoint[CHECKPOINT_NET_KEY]
    assert spec["net"]["_target_"] == "toy_nets.ResidualMLP"
    teacher = load_classifier(str(path), spec["in_features"], spec["out_features"])
    assert isinstance(teacher, ResidualMLP) and not teacher.training
    trained = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    assert trained.keys() == teacher.state_dict().keys()
    for name, value in teacher.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=0, atol=0)


def test_a_vae_encoder_node_replaced_from_the_command_line_gets_the_data_sizes():
    cfg = compose_config(["experiment=vae", "~task.encoder",
                          "+task.encoder={_target_: toy_nets.ResidualMLP, _partial_: true, hidden: [16]}"])
    task = instantiate_node(cfg.task, "task")
    task.build((8, 8))
    assert isinstance(task.encoder, ResidualMLP) and isinstance(task.decoder, MLP)
    posterior = task.encode(torch.rand(5, 64))
    assert posterior.batch_shape == (5,) and posterior.event_shape == (cfg.task.latent_dim,)


def test_network_arguments_are_checked_as_the_task_is_made_without_drawing_random_numbers():
    state = torch.random.get_rng_state()
    ClassificationTask(net=partial(MLP, hidden=[8]))
    assert torch.equal(state, torch.random.get_rng_state())
    with pytest.raises(ConfigValueError, match=r"^net\.hidden: expected a list of positive layer widths"):
        ClassificationTask(net=partial(MLP, hidden=[0]))
    with pytest.raises(ConfigValueError, match=r"^net: .*unexpected keyword argument 'hiden'"):
        ClassificationTask(net=partial(MLP, hiden=[8]))


def _save(tmp_path, spec, net):
    path = tmp_path / "teacher.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                CHECKPOINT_NET_KEY: spec}, path)
    return str(path)


def test_a_checkpoint_written_before_networks_came_from_the_config_still_loads(tmp_path):
    torch.manual_seed(0)
    old = MLP(6, [5], 3, "tanh", 0.1)
    legacy_spec = {"in_features": 6, "hidden": [5], "out_features": 3, "activation": "tanh", "dropout": 0.1}
    teacher = load_classifier(_save(tmp_path, legacy_spec, old), 6, 3)
    x = torch.randn(4, 6)
    torch.testing.assert_close(teacher(x), old.eval()(x), rtol=0, atol=0)


def test_a_checkpoint_can_only_name_a_network_class_to_build(tmp_path):
    spec = {"in_features": 6, "out_features": 3, "net": {"_target_": "subprocess.Popen", "args": ["true"]}}
    with pytest.raises(KlexpError, match=r"^task\.teacher_checkpoint: .* names subprocess\.Popen as its "
                                         r"network, which is not an nn\.Module"):
        load_classifier(_save(tmp_path, spec, MLP(6, [5], 3)), 6, 3)
