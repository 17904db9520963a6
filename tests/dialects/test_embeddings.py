"""The embeddings dialect's pure helpers: the usage read from an answer's end, the answer's
shape check, and the input's estimate."""

from __future__ import annotations

import orjson
import pytest

from app.dialects import embeddings
from app.dialects.usage import Usage

VECTORS = b'"data":[{"object":"embedding","index":0,"embedding":[0.1,-0.2]}]'


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # OpenAI, vLLM, Ollama: usage last.
        (
            b'{"object":"list",' + VECTORS + b',"model":"m","usage":{"prompt_tokens":7,'
            b'"total_tokens":7}}',
            Usage(input_tokens=7),
        ),
        # Trailing whitespace, nested details.
        (
            b'{"object":"list",' + VECTORS + b',"usage":{"prompt_tokens":3,'
            b'"prompt_tokens_details":{"cached_tokens":0}}}\n  ',
            Usage(input_tokens=3),
        ),
        # Usage first: in a small answer, that is still within the tail looked at.
        (b'{"usage":{"prompt_tokens":4,"total_tokens":4},' + VECTORS + b"}", Usage(4)),
        # A model named "usage" after the usage member.
        (b"{" + VECTORS + b',"usage":{"prompt_tokens":2},"model":"usage"}', Usage(2)),
        (b"{" + VECTORS + b',"usage":null}', None),
        (b"{" + VECTORS + b',"usage":{"total_tokens":9}}', None),
        (b"{" + VECTORS + b',"usage":{"prompt_tokens":-1}}', None),
        (b"{" + VECTORS + b',"usage":{"prompt_tokens":true}}', None),
        (b"{" + VECTORS + b"}", None),
        (b"<html>bad gateway</html>", None),
        (b"", None),
    ],
    ids=[
        "last",
        "whitespace-and-details",
        "first",
        "model-named-usage",
        "null",
        "no-prompt-tokens",
        "negative",
        "boolean",
        "absent",
        "html",
        "empty",
    ],
)
def test_answer_usage(raw: bytes, expected: Usage | None) -> None:
    assert embeddings.answer_usage(raw) == expected


def test_a_large_answer_s_usage_comes_from_its_end_alone() -> None:
    """Usage elsewhere than at the end of an answer past the whole-parse limit is not
    looked for (the vectors would be parsed on the event loop)."""
    vectors = orjson.dumps([[0.123456789] * 1536] * 64)
    assert len(vectors) > embeddings.WHOLE_PARSE_LIMIT
    last = b'{"data":' + vectors + b',"usage":{"prompt_tokens":640,"total_tokens":640}}'
    first = b'{"usage":{"prompt_tokens":640,"total_tokens":640},"data":' + vectors + b"}"
    assert embeddings.answer_usage(last) == Usage(input_tokens=640)
    assert embeddings.answer_usage(first) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"object":"list"}', True),
        (b'  \n{"object":"list"}\n', True),
        (b'{"object":"list"', False),  # cut short
        (b"[1, 2]", False),
        (b"<html><title>502</title></html>", False),
        (b"", False),
    ],
)
def test_is_json_object(raw: bytes, expected: bool) -> None:
    assert embeddings.is_json_object(raw) is expected


@pytest.mark.parametrize(
    ("given", "inputs", "estimate"),
    [
        ("x" * 35, ["x" * 35], 10),
        (["cat", "dog"], ["cat", "dog"], 2),
        ([1, 2, 3], [[1, 2, 3]], 3),
        ([[1, 2], [3]], [[1, 2], [3]], 3),
        ([""], [""], 1),  # never less than one (a TPM reservation of 0 is none)
    ],
)
def test_inputs_and_estimate(given: object, inputs: list[object], estimate: int) -> None:
    body = embeddings.validate_request({"model": "m", "input": given})
    assert list(embeddings.inputs(body["input"])) == inputs
    assert embeddings.estimate_input(body) == estimate
