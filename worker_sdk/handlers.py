"""Loading handlers named ``module:function``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from parcelo.errors import ConfigError


def load(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` (the function may be dotted: ``module:Class.method``).

    Raises:
        ConfigError: the spec is malformed, the module cannot be imported, or
            the attribute is missing or not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"cannot import handler {spec!r}: expected 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:
        raise ConfigError(f"cannot import handler {spec!r}: {type(err).__name__}: {err}") from err
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(
                f"cannot import handler {spec!r}: {module_name} has no attribute {attr!r}"
            ) from None
    if not callable(target):
        raise ConfigError(f"cannot import handler {spec!r}: {attr} is not callable")
    return target  # type: ignore[no-any-return]


def module_should_process(spec: str) -> Callable[..., Any] | None:
    """The ``should_process`` function of the handler's module, if it has a callable one."""
    module = importlib.import_module(spec.partition(":")[0])
    candidate = getattr(module, "should_process", None)
    return candidate if callable(candidate) else None
