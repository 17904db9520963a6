"""app/charts.py: exact SVG output for small inputs, and the number helpers."""

from __future__ import annotations

import pytest

from app.charts import bar_chart, compact, hbar_chart, line_chart, nice_max, stacked_bar_chart

AXIS_5 = (
    '<line class="grid" x1="48" y1="172" x2="588" y2="172"/>'
    '<text class="axis" x="42" y="176" text-anchor="end">0</text>'
    '<line class="grid" x1="48" y1="94" x2="588" y2="94"/>'
    '<text class="axis" x="42" y="98" text-anchor="end">2.5</text>'
    '<line class="grid" x1="48" y1="16" x2="588" y2="16"/>'
    '<text class="axis" x="42" y="20" text-anchor="end">5</text>'
)


def _open(chart_id: str, css: str, title: str, height: int = 200) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" id="{chart_id}"'
        f' viewBox="0 0 600 {height}" role="img" aria-labelledby="{chart_id}-title">'
        f'<title id="{chart_id}-title">{title}</title>'
    )


def test_bar_chart_exact() -> None:
    svg = bar_chart("c1", "Requests", ["05-01", "05-02"], [3, 1], name="ok")
    assert str(svg) == (
        _open("c1", "bars", "Requests") + AXIS_5 + "<g><title>05-01: 3</title>"
        '<rect class="s0" x="88.5" y="78.4" width="189" height="93.6"/></g>'
        "<g><title>05-02: 1</title>"
        '<rect class="s0" x="358.5" y="140.8" width="189" height="31.2"/></g>'
        '<text class="axis" x="183" y="190" text-anchor="middle">05-01</text>'
        '<text class="axis" x="453" y="190" text-anchor="middle">05-02</text></svg>'
    )


def test_stacked_bar_chart_exact_with_legend() -> None:
    svg = stacked_bar_chart("c2", "Tokens", ["a", "b"], [("in", [4, 0]), ("out", [1, 0])])
    assert str(svg) == (
        _open("c2", "bars", "Tokens") + AXIS_5 + '<text class="legend" x="588" y="10"'
        ' text-anchor="end">out</text>'
        '<rect class="s1" x="556.5" y="2" width="8" height="8"/>'
        '<text class="legend" x="542.5" y="10" text-anchor="end">in</text>'
        '<rect class="s0" x="517.5" y="2" width="8" height="8"/>'
        "<g><title>a: in 4, out 1</title>"
        '<rect class="s0" x="88.5" y="47.2" width="189" height="124.8"/>'
        '<rect class="s1" x="88.5" y="16" width="189" height="31.2"/></g>'
        "<g><title>b: in 0, out 0</title></g>"
        '<text class="axis" x="183" y="190" text-anchor="middle">a</text>'
        '<text class="axis" x="453" y="190" text-anchor="middle">b</text></svg>'
    )


def test_line_chart_exact() -> None:
    svg = line_chart("c3", "Errors", ["a", "b"], [0, 2.5], suffix="%")
    assert str(svg) == (
        _open("c3", "line", "Errors") + '<line class="grid" x1="48" y1="172" x2="588" y2="172"/>'
        '<text class="axis" x="42" y="176" text-anchor="end">0%</text>'
        '<line class="grid" x1="48" y1="94" x2="588" y2="94"/>'
        '<text class="axis" x="42" y="98" text-anchor="end">1.25%</text>'
        '<line class="grid" x1="48" y1="16" x2="588" y2="16"/>'
        '<text class="axis" x="42" y="20" text-anchor="end">2.5%</text>'
        '<polyline class="s0" points="183,172 453,16"/>'
        '<circle class="s0" cx="183" cy="172" r="3"><title>a: 0%</title></circle>'
        '<circle class="s0" cx="453" cy="16" r="3"><title>b: 2.5%</title></circle>'
        '<text class="axis" x="183" y="190" text-anchor="middle">a</text>'
        '<text class="axis" x="453" y="190" text-anchor="middle">b</text></svg>'
    )


def test_hbar_chart_exact_escapes_and_shortens_labels() -> None:
    svg = hbar_chart("c4", "Top", [("<b>", 10), ("a-very-long-name-for-a-key-x", 5)])
    assert str(svg) == (
        _open("c4", "hbars", "Top", height=56) + "<g><title>&lt;b&gt;: 10</title>"
        '<text class="label" x="142" y="19" text-anchor="end">&lt;b&gt;</text>'
        '<rect class="s0" x="150" y="7" width="380" height="16"/>'
        '<text class="value" x="536" y="19">10</text></g>'
        "<g><title>a-very-long-name-for-a-key-x: 5</title>"
        '<text class="label" x="142" y="43" text-anchor="end">a-very-long-name-for-…</text>'
        '<rect class="s0" x="150" y="31" width="190" height="16"/>'
        '<text class="value" x="346" y="43">5</text></g></svg>'
    )


@pytest.mark.parametrize(
    "svg",
    [
        bar_chart("e", "Empty", ["a"], [0], empty="No data"),
        bar_chart("e", "Empty", [], [], empty="No data"),
        line_chart("e", "Empty", ["a", "b"], [0, 0], empty="No data"),
    ],
)
def test_empty_charts_say_so(svg: str) -> None:
    assert svg.endswith(
        '<text class="empty" x="300" y="100" text-anchor="middle">No data</text></svg>'
    )
    assert "<rect" not in svg and "<polyline" not in svg


def test_hbar_empty() -> None:
    svg = hbar_chart("e", "Top", [], empty="Nothing")
    assert str(svg) == (
        _open("e", "hbars", "Top", height=32)
        + '<text class="empty" x="300" y="16" text-anchor="middle">Nothing</text></svg>'
    )


def test_titles_and_ids_are_escaped() -> None:
    svg = str(bar_chart('x"y', "<script>alert(1)</script>", ["<i>"], [1]))
    assert "<script>" not in svg and "<i>" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg
    assert 'id="x&quot;y"' in svg


def test_x_labels_thin_out_but_keep_the_last_day() -> None:
    labels = [f"d{i:02d}" for i in range(30)]
    svg = str(bar_chart("c", "t", labels, [1] * 30))
    shown = [label for label in labels if f">{label}</text>" in svg]
    assert shown == ["d01", "d05", "d09", "d13", "d17", "d21", "d25", "d29"]
    assert svg.count("<rect") == 30
    assert svg.count("<title") == 31  # the chart's own title and one per bar


def test_no_inline_styles() -> None:
    # The dashboard's CSP has no 'unsafe-inline' for styles.
    charts = [
        bar_chart("a", "t", ["x", "y"], [1, 2]),
        stacked_bar_chart("b", "t", ["x"], [("p", [1]), ("q", [2])]),
        line_chart("c", "t", ["x", "y"], [1, 2]),
        hbar_chart("d", "t", [("x", 1)]),
    ]
    for svg in charts:
        assert "style=" not in svg


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 1.0),
        (-3, 1.0),
        (0.3, 0.5),
        (1, 1.0),
        (3, 5.0),
        (7, 10.0),
        (12, 20.0),
        (240, 250.0),
        (251, 500.0),
        (999_999, 1_000_000.0),
    ],
)
def test_nice_max(value: float, expected: float) -> None:
    assert nice_max(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "0"),
        (7, "7"),
        (2.5, "2.5"),
        (1.25, "1.25"),
        (999, "999"),
        (1000, "1k"),
        (1234, "1.2k"),
        (125_000, "125k"),
        (2_500_000, "2.5M"),
        (3_000_000_000, "3G"),
    ],
)
def test_compact(value: float, expected: str) -> None:
    assert compact(value) == expected
