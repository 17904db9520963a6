"""OpenAI's Embeddings API (``POST /v1/embeddings``): request validation, the input's
token estimate, and the usage an answer reports, read without parsing its vectors.

Errors use the Chat Completions envelope (`app.dialects.openai`): same type, ``param``
naming the field. Backends of the OpenAI dialect (OpenAI, vLLM, Ollama, llama.cpp,
text-embeddings-inference) serve the same shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NotRequired, TypedDict, cast

import orjson

from app.dialects.json_values import is_int
from app.dialects.openai import validate_model
from app.dialects.tokens import estimate_text
from app.dialects.usage import Usage
from app.errors import InvalidRequestError

# ``input``: one text, texts, one text as token ids, or texts as token ids.
EmbeddingsInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingsRequest(TypedDict):
    model: str
    input: EmbeddingsInput
    encoding_format: NotRequired[str]  # "float" | "base64"; the SDK sends "base64"
    dimensions: NotRequired[int]
    user: NotRequired[str]


class EmbeddingObject(TypedDict):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # a string: little-endian float32s in base64


class EmbeddingsUsage(TypedDict):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(TypedDict):
    object: Literal["list"]
    data: list[EmbeddingObject]
    model: str
    usage: EmbeddingsUsage


INPUT_TYPES = (
    "a string, an array of strings, an array of integers (token ids) or an array of "
    "arrays of integers"
)
_ITEM_KINDS = {str: "a string", int: "an integer (a token id)", list: "an array of integers"}


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _validate_input(value: Any) -> None:
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise _bad(f"Invalid type for 'input': expected {INPUT_TYPES}.", "input")
    if not value:
        raise _bad(
            "Invalid 'input': empty array. Expected an array with minimum length 1.", "input"
        )
    # The items' types are taken in C (`set(map(type, …))`): a batch holds thousands of
    # texts, a token array thousands of ids. ``bool`` is a type of its own, so ``true``
    # is no token id.
    first = type(value[0])
    if first not in _ITEM_KINDS:
        raise _bad(
            "Invalid type for 'input[0]': expected a string, an integer (a token id) or an "
            "array of integers.",
            "input[0]",
        )
    if len(set(map(type, value))) > 1:
        at = next(i for i, item in enumerate(value) if type(item) is not first)
        raise _bad(
            f"Invalid type for 'input[{at}]': expected {_ITEM_KINDS[first]}, as 'input[0]' is.",
            f"input[{at}]",
        )
    if first is list:
        for i, tokens in enumerate(value):
            if tokens and set(map(type, tokens)) != {int}:
                j = next(j for j, token in enumerate(tokens) if type(token) is not int)
                raise _bad(
                    f"Invalid type for 'input[{i}][{j}]': expected an integer (a token id).",
                    f"input[{i}][{j}]",
                )


def validate_request(raw: Any) -> EmbeddingsRequest:
    """Check an embeddings body: ``model`` and ``input`` required, the optional fields'
    types; returns it. InvalidRequestError with ``param`` naming the field.

    Values are left to the backend (an ``encoding_format`` other than OpenAI's two, more
    than OpenAI's 2,048 inputs, an empty string): local servers take what OpenAI does
    not. Other fields pass as they are (``stream`` too: this API has none).
    """
    body = validate_model(raw)
    if body.get("input") is None:
        raise _bad("Missing required parameter: 'input'.", "input")
    _validate_input(body["input"])
    encoding = body.get("encoding_format")
    if encoding is not None and not isinstance(encoding, str):
        raise _bad("Invalid type for 'encoding_format': expected a string.", "encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not is_int(dimensions):
            raise _bad("Invalid type for 'dimensions': expected an integer.", "dimensions")
        if dimensions < 1:
            raise _bad(
                "Invalid 'dimensions': integer below minimum value. Expected a value >= 1, "
                f"but got {dimensions} instead.",
                "dimensions",
            )
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("Invalid type for 'user': expected a string.", "user")
    return cast(EmbeddingsRequest, body)


def inputs(value: EmbeddingsInput) -> Sequence[str | list[int]]:
    """A validated ``input`` as its list of inputs, one embedding each."""
    if isinstance(value, str):
        return [value]
    if value and type(value[0]) is int:
        return [value]
    return cast(list[str] | list[list[int]], value)


def estimate_input(body: EmbeddingsRequest) -> int:
    """Input tokens of a validated request: texts as `estimate_text` counts them, token
    arrays by their length (for the TPM reservation, until the backend's count)."""
    total = 0
    for item in inputs(body["input"]):
        total += estimate_text(item) if isinstance(item, str) else len(item)
    return max(total, 1)


# Where the answer's ``usage`` is looked for: OpenAI, vLLM, Ollama, llama.cpp and TEI all
# put it last, after the vectors.
USAGE_TAIL = 4096
# An answer whose tail holds no ``usage`` is parsed whole only up to this size.
WHOLE_PARSE_LIMIT = 1024 * 1024


def answer_usage(raw: bytes) -> Usage | None:
    """The input tokens an embeddings answer reports (``usage.prompt_tokens``; output is
    always 0); None when it reports none.

    Read from the ``"usage"`` member at the answer's end alone: a batch's vectors are
    megabytes of JSON (1,000 of 1,536 dimensions: 30 MB, ~150 ms to parse), which the
    event loop would wait for. Found elsewhere, the answer is parsed whole when small.
    """
    data: Any = None
    at = raw.rfind(b'"usage"', max(len(raw) - USAGE_TAIL, 0))
    if at >= 0:
        try:
            # `"usage": {…}}` closes the outer object: with a "{" before it, it is one.
            data = orjson.loads(b"{" + raw[at:])
        except orjson.JSONDecodeError:
            data = None
    if data is None and len(raw) <= WHOLE_PARSE_LIMIT:
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
    usage = data.get("usage") if isinstance(data, dict) else None
    prompt = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if not is_int(prompt) or prompt < 0:
        return None
    return Usage(input_tokens=prompt)


def is_json_object(raw: bytes) -> bool:
    """Whether ``raw`` starts and ends as a JSON object (an answer checked without being
    parsed: a proxy's HTML page or a cut body is not one)."""
    return raw[:64].lstrip()[:1] == b"{" and raw[-64:].rstrip()[-1:] == b"}"
