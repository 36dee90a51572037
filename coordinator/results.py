"""Leaf results and how they combine: the reducers a job names, and the checks a result passes.

Pure functions over JSON values as ``json.loads`` returns them. ``None`` is "no result", the
identity of every reducer. Every reducer is associative and commutative, so the tree can combine
finished siblings as they collapse while the job keeps a running total of every finished leaf,
in any order, and both agree (floats up to rounding).
"""

from __future__ import annotations

import json
from enum import IntEnum


class Reduce(IntEnum):
    """How a job combines its leaves' results; values equal ``parcelo.v1.Reduce`` (0 means NONE)."""

    NONE = 1
    SUM = 2
    MIN = 3
    MAX = 4
    MERGE = 5


def reduce_of(value: int) -> Reduce:
    """The reducer of a ``JobSpec.reduce`` value (unspecified is NONE)."""
    return Reduce(value) if value else Reduce.NONE


class ResultError(ValueError):
    """A result that cannot be accepted; the message says why (it becomes the leaf's error)."""


def _is_number(value: object) -> bool:
    # JSON true/false arrive as bool, which Python counts as int: they are not numbers here.
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if _is_number(value):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _no_constant(name: str) -> object:
    raise ResultError(f"the result is not JSON: {name} is not a JSON number")


def parse(text: str, reduce: Reduce, max_bytes: int) -> object:
    """The value of a result sent as JSON ``text``, checked for ``reduce``; None for ``""``.

    Raises:
        ResultError: over ``max_bytes`` of UTF-8, not JSON, or not what ``reduce`` combines.
    """
    if not text:
        return None
    # A character is at most 4 bytes: most results are measured without encoding them.
    if len(text) * 4 > max_bytes:
        size = len(text.encode())
        if size > max_bytes:
            raise ResultError(
                f"the result is {size} bytes, over the coordinator's --max-result-bytes ({max_bytes})"
            )
    value: object
    if _is_json_integer(text):
        # The common result (a count) without the JSON parser: several times cheaper per leaf.
        value = int(text)
    else:
        try:
            value = json.loads(text, parse_constant=_no_constant)
        except ResultError:
            raise
        except (ValueError, RecursionError) as err:
            raise ResultError(f"the result is not JSON: {err}") from None
    check(value, reduce)
    return value


def _is_json_integer(text: str) -> bool:
    """Whether ``text`` is a JSON integer ("-"?, digits, no leading zero) that ``int`` reads fast."""
    digits = text[1:] if text[0] == "-" else text
    return (
        0 < len(digits) <= 18
        and digits.isascii()
        and digits.isdigit()
        and (digits[0] != "0" or len(digits) == 1)
    )


def check(value: object, reduce: Reduce) -> None:
    """Raise :class:`ResultError` unless ``reduce`` can combine ``value``."""
    if value is None or reduce is Reduce.NONE:
        return
    if reduce is Reduce.MERGE:
        if not isinstance(value, dict):
            raise ResultError(f"reduce merge combines JSON objects; the result is {_kind(value)}")
    elif not _is_number(value):
        raise ResultError(f"reduce {reduce.name.lower()} combines numbers; the result is {_kind(value)}")


def conflict(reduce: Reduce, acc: object, value: object) -> str:
    """Why :func:`combine` would refuse ``value`` ("" when it would not); changes nothing."""
    if reduce is Reduce.MERGE and isinstance(acc, dict) and isinstance(value, dict):
        return _conflict(acc, value, "")
    return ""


def combine(reduce: Reduce, acc: object, value: object) -> object:
    """``acc`` and ``value`` combined. For merge, ``acc`` is updated in place and returned.

    ``acc`` belongs to the caller; ``value`` is neither changed nor shared by the answer (the
    objects it holds are copied), so the caller may keep it. Raises :class:`ResultError` when
    merge finds a conflict, before changing anything.
    """
    if value is None:
        return acc
    if acc is None:
        return _copy(value)
    if reduce is Reduce.SUM:
        return acc + value  # type: ignore[operator]
    if reduce is Reduce.MIN:
        return value if value < acc else acc  # type: ignore[operator]
    if reduce is Reduce.MAX:
        return value if value > acc else acc  # type: ignore[operator]
    if reduce is Reduce.MERGE:
        assert isinstance(acc, dict) and isinstance(value, dict)
        conflict = _conflict(acc, value, "")
        if conflict:
            raise ResultError(conflict)
        _merge_into(acc, value)
    return acc


def _copy(value: object) -> object:
    # Only objects are ever changed in place (by merge), so only they need copying.
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return value


def _conflict(acc: dict[str, object], value: dict[str, object], path: str) -> str:
    """Why ``value`` cannot merge into ``acc`` ("" when it can)."""
    for key, new in value.items():
        old = acc.get(key)
        if old is None or new is None:
            continue
        if _is_number(old) and _is_number(new):
            continue
        where = f"{path}.{key}" if path else key
        if isinstance(old, dict) and isinstance(new, dict):
            found = _conflict(old, new, where)
            if found:
                return found
        elif type(old) is not type(new) or old != new:
            shown = json.dumps(where)[:200]
            return (
                f"reduce merge: key {shown} is {_kind(old)} in one result and {_kind(new)} in another"
                + (" (different values)" if type(old) is type(new) else "")
                + ": only numbers and objects combine; other values must be equal"
            )
    return ""


def _merge_into(acc: dict[str, object], value: dict[str, object]) -> None:
    for key, new in value.items():
        if new is None:
            continue
        old = acc.get(key)
        if old is None:
            acc[key] = _copy(new)
        elif isinstance(old, dict):
            _merge_into(old, new)  # type: ignore[arg-type]
        elif _is_number(old):
            acc[key] = old + new  # type: ignore[operator]


def encode(value: object) -> str:
    """The JSON text of a result ("" for None), compact."""
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"))
