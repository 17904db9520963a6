"""`<think>…</think>` at the start of a backend's content, split at every cut."""

from __future__ import annotations

import pytest

from app.translate.think_tags import ThinkTags, split_think_tags

CASES = [
    # content, thinking, text
    ("<think>Six sevens.</think>\n\n42", "Six sevens.", "42"),
    ("\n<think>\nhm</think>42", "\nhm", "42"),
    ("<think></think>\n\nJust text.", "", "Just text."),
    ("<think>a < b and </thin is not </think>ok", "a < b and </thin is not ", "ok"),
    ("<think>cut off before it closed", "cut off before it closed", ""),
    ("No tags here.", "", "No tags here."),
    ("<thinking>is not the tag</thinking>", "", "<thinking>is not the tag</thinking>"),
    ("<b>bold</b>", "", "<b>bold</b>"),
    ("Text first <think>then a tag</think>", "", "Text first <think>then a tag</think>"),
    ("<", "", "<"),
    ("  <thi", "", "  <thi"),
]


def streamed(pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    tags = ThinkTags()
    out = [p for piece in pieces for p in tags.feed(piece)] + tags.finish()
    thinking = "".join(t for kind, t in out if kind == "thinking")
    text = "".join(t for kind, t in out if kind == "text")
    return thinking, text, out


@pytest.mark.parametrize(("content", "thinking", "text"), CASES)
def test_every_cut_of_a_stream_splits_the_same(content: str, thinking: str, text: str) -> None:
    for size in range(1, len(content) + 1):
        pieces = [content[i : i + size] for i in range(0, len(content), size)]
        got_thinking, got_text, out = streamed(pieces)
        assert (got_thinking, got_text) == (thinking, text), pieces
        assert all(piece for _, piece in out)  # never an empty piece
        kinds = [kind for kind, _ in out]
        assert kinds == sorted(kinds, key=("thinking", "text").index)  # thinking first
    for a in range(len(content) + 1):  # and cut in two anywhere
        for b in range(a, len(content) + 1):
            got = streamed([content[:a], content[a:b], content[b:]])[:2]
            assert got == (thinking, text), (a, b)


@pytest.mark.parametrize(("content", "thinking", "text"), CASES)
def test_a_whole_answer_splits_as_its_stream(content: str, thinking: str, text: str) -> None:
    split = split_think_tags(content)
    if content.lstrip().startswith("<think>"):
        assert split == (thinking, text)
    else:
        assert split is None
        assert text == content


def test_text_after_the_tag_passes_through_at_once() -> None:
    tags = ThinkTags()
    assert tags.feed("<think>x</think>") == [("thinking", "x")]
    assert tags.feed("\n\n") == []
    assert tags.feed("Hello") == [("text", "Hello")]
    assert tags.feed(" <think> again") == [("text", " <think> again")]
