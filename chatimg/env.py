"""Small typed readers for settings that come from the environment.

Each one fails loudly (ImproperlyConfigured) on a malformed value, because a
typo in production config should stop the process at start-up, not surface as
odd behaviour hours later.
"""

import os
from decimal import Decimal, InvalidOperation

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_choice(name: str, default: str, choices: set[str]) -> str:
    value = env_str(name, default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def env_prices(name: str) -> dict[str, Decimal]:
    """Parse "key=price,key=price" into Decimals (an empty dict when unset)."""
    prices: dict[str, Decimal] = {}
    for pair in env_list(name, []):
        key, sep, value = pair.partition("=")
        try:
            price = Decimal(value.strip())
        except InvalidOperation:
            price = Decimal(-1)
        if not sep or not key.strip() or price < 0:
            raise ImproperlyConfigured(f"{name} must look like 'low=0.011,*=0.04', got {pair!r}")
        prices[key.strip()] = price
    return prices


def env_model_counts(name: str, *, maximum: int) -> dict[str, int]:
    """Parse "4" or "prefix=4,prefix=1" into {model name prefix: count} ("*" = any model).

    A bare number applies to every model. Unset: an empty dict (the built-in
    table for the model decides).
    """
    counts: dict[str, int] = {}
    for pair in env_list(name, []):
        key, sep, value = pair.rpartition("=") if "=" in pair else ("*", "=", pair)
        try:
            count = int(value.strip())
        except ValueError:
            count = -1
        if not sep or not key.strip() or not 0 <= count <= maximum:
            raise ImproperlyConfigured(
                f"{name} must look like '4' or 'gpt-image=4,dall-e-3=1' "
                f"(0 to {maximum}), got {pair!r}"
            )
        counts[key.strip()] = count
    return counts
