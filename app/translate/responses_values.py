"""The checks every part of a Responses API request goes through: a value of the expected
type, or a 400 `InvalidRequestError` naming the offending ``param`` the way OpenAI does.
"""

from __future__ import annotations

from typing import Any

from app.dialects.json_values import is_int, is_number
from app.errors import InvalidRequestError

REASONING_EFFORTS = ("minimal", "low", "medium", "high", "xhigh", "max")


def bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def object_at(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad(f"Invalid type for '{param}': expected an object.", param)
    return value


def array_at(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list):
        raise bad(f"Invalid type for '{param}': expected an array.", param)
    return value


def string_at(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise bad(f"Invalid type for '{param}': expected a string.", param)
    return value


def name_at(value: Any, param: str) -> str:
    if value is None:
        raise bad(f"Missing required parameter: '{param}'.", param)
    if not isinstance(value, str) or not value:
        raise bad(f"Invalid '{param}': expected a non-empty string.", param)
    return value


def optional_field(body: dict[str, Any], key: str, kind: str) -> Any:
    """``body[key]`` when it is of ``kind`` (string, boolean, number, integer, object, array),
    None when it is absent or null; anything else is a 400."""
    value = body.get(key)
    if value is None:
        return None
    ok = {
        "string": isinstance(value, str),
        "boolean": isinstance(value, bool),
        "number": is_number(value),
        "integer": is_int(value),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }[kind]
    if not ok:
        article = "an" if kind[0] in "aeiou" else "a"
        raise bad(f"Invalid type for '{key}': expected {article} {kind}.", key)
    return value


def effort_at(value: Any, param: str) -> str | None:
    """A ``reasoning.effort`` value (``none`` or one of `REASONING_EFFORTS`), None when absent."""
    if value is None:
        return None
    if not isinstance(value, str) or value not in ("none", *REASONING_EFFORTS):
        raise bad(
            f"Invalid value for '{param}': {value!r}; expected one of none, "
            + ", ".join(REASONING_EFFORTS)
            + ".",
            param,
        )
    return value
