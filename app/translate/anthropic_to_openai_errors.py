"""OpenAI-compatible backends' errors as the errors Anthropic clients see (PROTOCOL.md §6.11).

Messages stay verbatim (Claude Code matches on wording), except context-length errors, which
are rewritten into Anthropic's own sentence when all three numbers can be read.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from app.dialects.json_values import is_int
from app.errors import (
    GatewayError,
    InvalidRequestError,
    UpstreamError,
    from_upstream_status,
    nested_too_deeply,
)

# "…maximum context length is 8192 tokens. However, you requested 9000 tokens (5000 in the
# messages, 4000 in the completion)…" (OpenAI, DeepSeek, older vLLM).
_CTX_REQUESTED = re.compile(
    r"maximum context length is (\d+) tokens.*?requested \d+ tokens \(([^)]*)\)", re.I | re.S
)
_CTX_PART = re.compile(r"(\d+) in the (\w+)")
# vLLM ≥ 0.6: "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's maximum
# context length is 32768 tokens and your request has 1200 input tokens (…)".
_CTX_VLLM = re.compile(
    r"too large: (\d+)\.\s*This model's maximum context length is (\d+) tokens and your "
    r"request has (\d+) input tokens",
    re.I,
)
# SGLang: "…maximum context length of 4096 tokens. You requested a total of 5000 tokens: 1000
# tokens from the input messages and 4000 tokens for the completion…".
_CTX_SGLANG = re.compile(
    r"maximum context length of (\d+) tokens.*?(\d+) tokens from the input messages and (\d+) "
    r"tokens for the completion",
    re.I | re.S,
)
# Text Generation Inference: "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 1000
# `inputs` tokens and 4000 `max_new_tokens`".
_CTX_TGI = re.compile(
    r"must be <= (\d+)\. Given: (\d+) `inputs` tokens and (\d+) `max_new_tokens`", re.I
)


def context_limit(message: str) -> tuple[int, int, int] | None:
    """(input, max_tokens, limit) from a context-length error, when all three can be read."""
    m = _CTX_REQUESTED.search(message)
    if m:
        parts = {kind.lower(): int(n) for n, kind in _CTX_PART.findall(m.group(2))}
        if "completion" in parts:
            completion = parts.pop("completion")
            return sum(parts.values()), completion, int(m.group(1))
    m = _CTX_VLLM.search(message)
    if m:
        return int(m.group(3)), int(m.group(1)), int(m.group(2))
    m = _CTX_SGLANG.search(message)
    if m:
        return int(m.group(2)), int(m.group(3)), int(m.group(1))
    m = _CTX_TGI.search(message)
    if m:
        return int(m.group(2)), int(m.group(3)), int(m.group(1))
    return None


# Errors that name only the most output the model gives, not the context: with the input as
# the gateway estimated it, they say the same as a context-length error.
# OpenAI: "max_tokens is too large: 32000. This model supports at most 16384 completion
# tokens, whereas you provided 32000."
_OUT_OPENAI = re.compile(r"too large: (\d+)\.\s*This model supports at most (\d+) completion", re.I)
# DeepSeek: "Invalid max_tokens value, the valid range of max_tokens is [1, 8192]".
_OUT_RANGE = re.compile(r"valid range of max(?:_completion)?_tokens is \[1, (\d+)\]", re.I)


def output_limit(message: str, requested: int | None) -> tuple[int, int] | None:
    """(max_tokens asked for, the most the model gives) from an output-limit error."""
    m = _OUT_OPENAI.search(message)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = _OUT_RANGE.search(message)
    if m and requested is not None:
        return requested, int(m.group(1))
    return None


def _context_message(
    message: str, input_tokens: int | None = None, max_tokens: int | None = None
) -> str | None:
    found = context_limit(message)
    if found is None and input_tokens is not None:
        out = output_limit(message, max_tokens)
        if out is not None:
            found = (input_tokens, out[0], input_tokens + out[1])
    if found is None:
        return None
    # Claude Code matches exactly this wording on a 400 to lower max_tokens and retry
    # (PROTOCOL.md §3.2, CCDIVE §3.7).
    return "input length and `max_tokens` exceed context limit: {} + {} > {}".format(*found)


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_MAX_MESSAGE = 2000


def _json_text(value: Any) -> str:
    """``value`` as JSON text for an error message; described instead when it is nested
    past the 254 levels orjson writes (it reads 1,024: an upstream can send that)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError as exc:
        if not nested_too_deeply(exc):
            raise
        return "upstream sent an error nested too deeply to show (more than 254 levels)"


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        # FastAPI validation errors: [{"loc": [...], "msg": "...", "type": "..."}]
        items = []
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                loc = item.get("loc")
                where = ".".join(str(x) for x in loc) if isinstance(loc, list) else ""
                items.append(f"{where}: {item['msg']}" if where else item["msg"])
            else:
                items.append(_json_text(item))
        return "; ".join(items)
    return _json_text(detail)


def _error_fields(data: Any) -> tuple[str, str | None, int | None]:
    """(message, code, status hint) of a decoded error body or in-stream error payload."""
    if isinstance(data, str):
        return data, None, None
    if not isinstance(data, dict):
        return _json_text(data), None, None
    err = data.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
        message = msg if isinstance(msg, str) and msg else _json_text(err)
        code = err.get("code")
        etype = err.get("type")
        code_str = code if isinstance(code, str) else etype if isinstance(etype, str) else None
        status = code if is_int(code) else None
        return message, code_str, status
    if isinstance(err, str) and err:
        return err, None, None
    if "detail" in data:
        return _detail_text(data["detail"]), None, None
    msg = data.get("message")
    if isinstance(msg, str) and msg:
        code = data.get("code")
        status = code if is_int(code) else None
        etype = data.get("type")
        return msg, etype if isinstance(etype, str) else None, status
    return _json_text(data), None, None


def _build_error(
    status: int,
    message: str,
    code: str | None,
    retry_after: float | None,
    input_tokens: int | None = None,
    max_tokens: int | None = None,
) -> GatewayError:
    rewritten = _context_message(message, input_tokens, max_tokens)
    if rewritten is not None:
        return InvalidRequestError(rewritten, code=code)
    err = from_upstream_status(status, message, retry_after=retry_after, code=code)
    if status == 429 and code == "insufficient_quota":
        # Out of credit is not going to clear by retrying (PROTOCOL.md §6.11).
        err.headers["x-should-retry"] = "false"
    return err


def upstream_error(
    status: int,
    body: bytes,
    retry_after: float | None = None,
    *,
    input_tokens: int | None = None,
    max_tokens: int | None = None,
) -> GatewayError:
    """An OpenAI backend's non-2xx answer as the error the Anthropic client sees (§6.11).

    The message is kept verbatim from ``{"error":{"message"}}``, ``{"error": "..."}``,
    ``{"detail": ...}``, ``{"message": ...}`` or the plain-text body; an HTML page becomes a
    one-line summary with its title; context-length errors are rewritten into Anthropic's
    wording when the input, ``max_tokens`` and limit can all be read from them, and so are
    output-limit errors ("supports at most 16384 completion tokens") given the request's
    ``input_tokens`` (as estimated) and ``max_tokens``: Claude Code lowers its max_tokens
    on that wording and asks again (its 32,000 is more than many models give).
    """
    text = body.decode("utf-8", "replace").strip()
    code: str | None = None
    if not text:
        message = f"upstream returned HTTP {status} with an empty body"
    else:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = None
            if text.startswith("<") or "<html" in text[:500].lower():
                title = _TITLE.search(text)
                summary = " ".join(title.group(1).split()) if title else ""
                message = f"upstream returned an HTML error page (HTTP {status})"
                if summary:
                    message += f": {summary}"
            else:
                message = text[:_MAX_MESSAGE]
        else:
            message, code, _ = _error_fields(data)
    return _build_error(status, message, code, retry_after, input_tokens, max_tokens)


_STREAM_STATUS_HINTS = (
    ("overload", 503),
    ("service_unavailable", 503),
    ("rate_limit", 429),
    ("insufficient_quota", 429),
    ("timeout", 504),
    ("invalid_request", 400),
    ("context_length", 400),
)


def error_from_payload(payload: Any) -> GatewayError:
    """An error object inside a 200 answer (``data: {"error": …}`` or a JSON body) as a
    GatewayError: the status comes from an integer ``code`` (vLLM) or the type/code words;
    without either, a 502: the backend answered 200 and failed, which is no 500 of the
    gateway's (nor one the backend sent: that keeps its status, `upstream_error`)."""
    message, code, status = _error_fields({"error": payload})
    if status is None or not 400 <= status <= 599:
        status = UpstreamError.status
        hint = (code or "").lower()
        for word, mapped in _STREAM_STATUS_HINTS:
            if word in hint:
                status = mapped
                break
    return _build_error(status, message, code, None)
