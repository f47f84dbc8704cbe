"""Check a composed config against the typed signatures of its ``_target_`` classes.

Runs before anything is built or trained: an unknown key (with the closest valid name), a value
of the wrong type or outside a ``Literal``'s choices, and a NaN anywhere fail at start-up with the
key's full path. The hints of klexp's classes and of Lightning's and torch's (Trainer, callbacks,
loggers, optimisers) are read; a hint the checker cannot judge accepts every value. Range checks (a
negative weight, ε ∉ [0, 1)…) live in the constructors themselves and are reported with the same
path when the config is instantiated.
"""

from __future__ import annotations

import difflib
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from hydra.utils import get_object
from lightning_fabric.utilities.seed import max_seed_value, min_seed_value
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

from klexp.errors import KlexpError

_HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
# Packages whose constructors' type hints are checked; other classes are checked for unknown keys
# only, as their hints may promise less than the classes accept.
TYPED_PACKAGES = ("klexp", "pytorch_lightning", "lightning", "lightning_fabric", "torch")


class ConfigError(KlexpError):
    """A key of the composed config is unknown or has a value of the wrong type."""


def check_resolvable(cfg: DictConfig) -> None:
    """Every value is set (no ``???`` left) and every interpolation resolves."""
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key}: a value is required (the config leaves it ???)") from None
    except InterpolationResolutionError as error:
        raise ConfigError(f"{error.full_key}: cannot resolve {error.msg.splitlines()[0]}") from None


def check_no_nan(cfg: DictConfig) -> None:
    """No value is NaN: no setting means "not a number". A NaN written in the config is named
    where it is written, before the keys that interpolate it."""
    def walk(value: Any, path: str) -> None:
        if isinstance(value, float) and math.isnan(value):
            raise ConfigError(f"{path}: expected a number, got nan")
        if isinstance(value, dict):
            for key, child in value.items():
                walk(child, _join(path, key))
        elif isinstance(value, list):
            for index, child in enumerate(value):
                walk(child, f"{path}[{index}]")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    walk(OmegaConf.to_container(cfg, resolve=True), "")


def check_config(cfg: DictConfig | ListConfig | Any, path: str = "") -> None:
    """Walk the config; check every ``_target_`` node's keys and value types."""
    if not path and isinstance(cfg, DictConfig):
        check_resolvable(cfg)
        check_no_nan(cfg)
    if isinstance(cfg, DictConfig):
        if "_target_" in cfg:
            _check_target_node(cfg, path)
        for key in cfg:
            if key in _HYDRA_KEYS:
                continue
            child = cfg._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)):
                check_config(child, _join(path, key))
    elif isinstance(cfg, ListConfig):
        for index, item in enumerate(cfg):
            if isinstance(item, (DictConfig, ListConfig)):
                check_config(item, f"{path}[{index}]")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def resolve_target(node: DictConfig, path: str) -> Callable[..., Any]:
    target = node._target_
    try:
        return get_object(target)
    except Exception:
        raise ConfigError(f"{_join(path, '_target_')}: cannot import {target!r}") from None


def signature_parameters(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named parameters of ``target`` (following ``**kwargs`` up the MRO) and whether it still
    accepts arbitrary keyword arguments."""
    functions = _initialisers(target)
    parameters: dict[str, inspect.Parameter] = {}
    for function in functions:
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return parameters, True
        for name, parameter in signature.parameters.items():
            if parameter.kind in (parameter.VAR_POSITIONAL,) or name == "self":
                continue
            if parameter.kind == parameter.VAR_KEYWORD:
                continue
            parameters.setdefault(name, parameter)
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            return parameters, False
        if function is object.__init__:
            break
    return parameters, True


def _initialisers(target: Callable[..., Any]) -> list[Callable[..., Any]]:
    """``__init__`` of the class and of its bases, most derived first (or the function itself)."""
    if not inspect.isclass(target):
        return [target]
    return [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]


def _type_hints(target: Callable[..., Any]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    for function in reversed(_initialisers(target)):
        try:
            hints.update(typing.get_type_hints(function))
        except Exception:
            continue
    return hints


def _check_target_node(node: DictConfig, path: str) -> None:
    target = resolve_target(node, path)
    parameters, open_kwargs = signature_parameters(target)
    hints = _type_hints(target) if _is_typed(target) else {}
    name = getattr(target, "__qualname__", str(target))
    for key in node:
        if key in _HYDRA_KEYS:
            continue
        if key not in parameters:
            if open_kwargs:
                continue
            close = difflib.get_close_matches(str(key), list(parameters), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{_join(path, key)}: unknown key for {name}{hint} "
                f"(allowed: {', '.join(sorted(parameters))})"
            )
        if key in hints:
            child = node._get_node(key)
            if child is not None and child._is_interpolation():
                value = OmegaConf.select(node, str(key), throw_on_missing=False)
            else:
                value = child._value() if not isinstance(child, (DictConfig, ListConfig)) else child
            problem = _type_problem(value, hints[key])
            if problem:
                raise ConfigError(f"{_join(path, key)}: {problem}")


def _is_typed(target: Callable[..., Any]) -> bool:
    package = str(getattr(target, "__module__", "")).split(".")[0]
    return package in TYPED_PACKAGES


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint``, or None when it does (or cannot be judged)."""
    if value is None:
        return None if _allows_none(hint) else "must be set (got null)"
    if isinstance(value, DictConfig) and "_target_" in value:
        return None  # a nested object: checked as its own node
    origin = get_origin(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return None
    if origin is Literal:
        if any(_same(value, choice) for choice in get_args(hint)):
            return None
        return f"expected {_describe(hint)}, got {value!r}"
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        problems = [_type_problem(value, option) for option in options]
        if any(p is None for p in problems):
            return None
        return problems[0] if len(problems) == 1 else f"expected {_describe(hint)}, got {value!r}"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"expected a number, got {value!r}"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"expected an integer, got {value!r}"
    if hint is bool:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if hint is str:
        return None if isinstance(value, str) else f"expected a string, got {value!r}"
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        return _sequence_problem(value, hint)
    if origin in (dict, Mapping) or hint is dict:
        return None if isinstance(value, (DictConfig, dict)) else f"expected a mapping, got {value!r}"
    scalar = (str, int, float, bool)
    if inspect.isclass(hint) and isinstance(value, scalar) and not issubclass(hint, scalar):
        return f"expected {_describe(hint)}, got {value!r}"
    return None


def _sequence_problem(value: Any, hint: Any) -> str | None:
    if not isinstance(value, (ListConfig, list, tuple)):
        return f"expected a list, got {value!r}"
    item_types = get_args(hint)
    if len(item_types) == 1 or (len(item_types) == 2 and item_types[1] is Ellipsis):
        item_types = (item_types[0],) * len(value)
    elif item_types and len(item_types) != len(value):
        return f"expected a list of {len(item_types)} items, got {value!r}"
    for item, item_type in zip(value, item_types, strict=False):
        problem = _type_problem(item, item_type)
        if problem:
            return f"list item {item!r}: {problem}"
    return None


def _same(value: Any, choice: Any) -> bool:
    """``value == choice`` of the same type (``True`` is not the ``Literal[1]`` choice)."""
    return type(value) is type(choice) and value == choice


def _allows_none(hint: Any) -> bool:
    return hint is type(None) or (
        get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)
    )


_DESCRIPTIONS = {int: "an integer", float: "a number", str: "a string", list: "a list",
                 tuple: "a list", Sequence: "a list", dict: "a mapping", Mapping: "a mapping"}


def _describe(hint: Any) -> str:
    """What ``hint`` accepts, in words: "a list, a string or an integer", "one of 16, 32, …"."""
    options = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    choices: list[str] = []
    words: list[str] = []
    for option in options:
        if option is type(None):
            continue
        base = get_origin(option) or option
        if base is Literal or base is bool:
            values = get_args(option) if base is Literal else ("true", "false")
            choices += [str(c) for c in values if str(c) not in choices]
            continue
        word = _DESCRIPTIONS.get(base) or (f"{_article(base.__name__)} config (with _target_)"
                                           if inspect.isclass(base) else str(option))
        if word not in words:
            words.append(word)
    if "a number" in words and "an integer" in words:
        words.remove("an integer")
    if choices == ["true", "false"]:
        words.append("true or false")
    elif choices:
        words.append(f"one of {', '.join(choices)}")
    if len(words) <= 1:
        return words[0] if words else "null"
    return f"{', '.join(words[:-1])} or {words[-1]}"


def _article(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def check_run_settings(cfg: DictConfig) -> None:
    """The top-level keys every run reads: seed (within the range ``seed_everything`` takes),
    threads, test, objective, ckpt_path, verbose. Every interpolation is resolved first, so that
    one that cannot be is named, not raised while a key is read."""
    check_resolvable(cfg)
    expected: dict[str, Any] = {"seed": int, "threads": int | None, "test": bool,
                                "objective": str | None, "ckpt_path": str | None, "verbose": bool}
    for key, hint in expected.items():
        if key not in cfg:
            continue
        problem = _type_problem(cfg[key], hint)
        if problem:
            raise ConfigError(f"{key}: {problem}")
    seed = cfg.get("seed")
    if isinstance(seed, int) and not min_seed_value <= seed <= max_seed_value:
        raise ConfigError(f"seed: expected an integer in [{min_seed_value}, {max_seed_value}], got {seed}")
    if cfg.get("threads") is not None and cfg.threads < 1:
        raise ConfigError(f"threads: expected an integer ≥ 1 or null, got {cfg.threads}")
