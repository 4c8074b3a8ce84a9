"""Tuning constants read from the environment, for measurements, checked by name."""

import os

__all__ = ["tuning_setting"]


def tuning_setting(name: str, default: float, low: float, high: float) -> float:
    """The number in the environment variable ``name`` (``default`` where unset), refused
    by name unless within ``[low, high]``."""
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a number in [{low}, {high}]") from None
    if not low <= value <= high:
        raise ValueError(f"{name}={text!r}: expected a number in [{low}, {high}]")
    return value
