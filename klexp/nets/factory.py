"""Networks from the config: a node the task completes with the shapes the data decide.

A task's network (``task.net``, ``task.encoder``, ``task.generator``…) is a ``NetFactory``:
called with ``in_features`` and ``out_features`` it returns the ``nn.Module``. In the config
that is a Hydra node with ``_partial_: true``; the task adds the two sizes once the data is known::

    net:
      _target_: klexp.nets.mlp.MLP
      _partial_: true
      hidden: [512, 512]

A checkpoint describes its network as the same node (``net_spec``), so a frozen copy of it (a
teacher, a baseline) is rebuilt from the file alone (``build_from_spec``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch
from hydra.utils import get_class
from torch import nn

from klexp.errors import ConfigValueError, KlexpError


class NetFactory(Protocol):
    """What a task calls to make one of its networks."""

    def __call__(self, *, in_features: int, out_features: int) -> nn.Module: ...


def check_net(factory: NetFactory, key: str) -> None:
    """Build the network once on the meta device (no memory, no random numbers drawn), with one
    input and one output, so that a wrong argument fails as the task is made, before anything is
    trained, as ``<key>.<argument>: expected …``. Other failures are left to the real build, which
    has the data's sizes."""
    try:
        with torch.device("meta"):
            net = factory(in_features=1, out_features=1)
    except ConfigValueError as error:
        raise ConfigValueError(f"{key}.{error.key}", error.message) from None
    except TypeError as error:
        raise ConfigValueError(key, str(error).strip().splitlines()[0]) from None
    except Exception:  # e.g. a network that needs more than one input
        return
    if not isinstance(net, nn.Module):
        raise ConfigValueError(key, f"expected a network (an nn.Module), got {type(net).__name__}")


def net_spec(factory: NetFactory) -> dict[str, Any] | None:
    """The factory as a plain ``{"_target_": "<class>", **arguments}`` node, or None when it is not
    a ``functools.partial`` (Hydra's ``_partial_: true``) of a class."""
    if not isinstance(factory, functools.partial) or not isinstance(factory.func, type):
        return None
    target = factory.func
    return {"_target_": f"{target.__module__}.{target.__qualname__}", **_plain(factory.keywords)}


def build_from_spec(spec: Mapping[str, Any] | None, in_features: int, out_features: int, key: str,
                    path: str) -> nn.Module:
    """The network a checkpoint's ``net_spec`` describes, with fresh weights. Only an ``nn.Module``
    class is called: a checkpoint names what to build, it cannot run arbitrary code."""
    if spec is None:
        raise KlexpError(f"{key}: {path} holds a network that was not built from a `_partial_: true` "
                         "node, so it cannot be rebuilt")
    arguments = dict(spec)
    target = arguments.pop("_target_")
    try:
        cls = get_class(target)
    except Exception as error:
        raise KlexpError(f"{key}: {path} needs the network {target}, which cannot be imported "
                         f"({error})") from None
    if not issubclass(cls, nn.Module):
        raise KlexpError(f"{key}: {path} names {target} as its network, which is not an nn.Module")
    return cls(in_features=in_features, out_features=out_features, **arguments)


def _plain(value: Any) -> Any:
    """Lists and dicts (Hydra passes OmegaConf containers) as plain ones, for ``weights_only`` loads."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
