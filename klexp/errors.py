"""Errors for user mistakes: each names the offending key and what was expected."""

from __future__ import annotations

import math
from typing import Any


class KlexpError(Exception):
    """A problem with the user's input (config, file, path or id), reported in one line."""


class ConfigValueError(KlexpError, ValueError):
    """A constructor argument out of its allowed range; ``key`` is the argument's name."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class TermTypeError(KlexpError, TypeError):
    """A term of a type its task cannot serve (a distillation term where KL terms are read)."""


class NonFiniteError(KlexpError, FloatingPointError):
    """A loss or KL value turned NaN or infinite during training."""


def require(condition: bool, key: str, expected: str, got: Any) -> None:
    """Raise ``ConfigValueError`` for ``key`` unless ``condition`` holds."""
    if not condition:
        raise ConfigValueError(key, f"expected {expected}, got {got!r}")


def require_non_negative(key: str, value: float) -> None:
    require(_is_real(value) and value >= 0, key, "a number ≥ 0", value)


def require_finite_non_negative(key: str, value: float) -> None:
    require(_is_real(value) and math.isfinite(value) and value >= 0, key, "a finite number ≥ 0", value)


def require_positive(key: str, value: float) -> None:
    require(_is_real(value) and value > 0, key, "a number > 0", value)


def require_finite(key: str, value: float) -> None:
    require(_is_real(value) and math.isfinite(value), key, "a finite number", value)


def require_finite_positive(key: str, value: float) -> None:
    require(_is_real(value) and math.isfinite(value) and value > 0, key, "a finite number > 0", value)


def require_positive_int(key: str, value: int) -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
            "an integer > 0", value)


def require_in(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    require(value in allowed, key, f"one of {', '.join(map(str, allowed))}", value)


def require_unit_interval(key: str, value: float, *, closed_right: bool = False) -> None:
    bounds = "[0, 1]" if closed_right else "[0, 1)"
    inside = _is_real(value) and value >= 0 and (value <= 1 if closed_right else value < 1)
    require(inside, key, f"a number in {bounds}", value)


def _is_real(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not (isinstance(value, float) and math.isnan(value))
    )
