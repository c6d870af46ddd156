"""Charts drawn on the server as inline SVG (no JavaScript library): only numbers go into the
markup, so it is safe to mark it safe."""

from __future__ import annotations

from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 320, 90
PAD_LEFT, PAD_TOP, PAD_BOTTOM = 4, 6, 14

CHARTS = (
    ("requests", "Requests / s", "{:.2f}"),
    ("errors", "Errors / s", "{:.2f}"),
    ("p50", "Latency p50 (s)", "{:.3f}"),
    ("p95", "Latency p95 (s)", "{:.3f}"),
    ("queued", "Queue depth", "{:.0f}"),
    ("replicas", "Replicas ready", "{:.0f}"),
)


def _polyline(points: list[tuple[float, float]], width: float, height: float) -> tuple[str, float]:
    """SVG points of a line scaled into width x height, and the largest value."""
    if not points:
        return "", 0.0
    t0, t1 = points[0][0], points[-1][0]
    top = max(value for _, value in points) or 1.0
    span = (t1 - t0) or 1.0
    coordinates = []
    for t, value in points:
        x = PAD_LEFT + (t - t0) / span * width
        y = PAD_TOP + height - value / top * height
        coordinates.append(f"{x:.1f},{y:.1f}")
    return " ".join(coordinates), top


def chart_svg(points: list[tuple[float, float]], *, label: str, number: str) -> SafeString:
    width, height = WIDTH - PAD_LEFT * 2, HEIGHT - PAD_TOP - PAD_BOTTOM
    line, top = _polyline(points, width, height)
    if not line:
        body = f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="chart-empty">no data yet</text>'
    else:
        minutes = (points[-1][0] - points[0][0]) / 60
        body = (
            f'<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="{line}"/>'
            f'<text x="{PAD_LEFT}" y="{PAD_TOP + 8}" class="chart-axis">max {number.format(top)}</text>'
            f'<text x="{WIDTH - PAD_LEFT}" y="{HEIGHT - 2}" text-anchor="end" class="chart-axis">'
            f"last {minutes:.0f} min</text>"
        )
    return mark_safe(  # noqa: S308 - numbers and the fixed labels of CHARTS only
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" '
        f'aria-label="{label}" data-points="{len(points)}">'
        f'<line x1="0" y1="{HEIGHT - PAD_BOTTOM}" x2="{WIDTH}" y2="{HEIGHT - PAD_BOTTOM}" class="chart-base"/>'
        f"{body}</svg>"
    )


def endpoint_charts(series: dict[str, list[tuple[float, float]]]) -> list[dict]:
    charts = []
    for name, label, number in CHARTS:
        points = series.get(name, [])
        charts.append({
            "name": name, "label": label, "svg": chart_svg(points, label=label, number=number),
            "latest": number.format(points[-1][1]) if points else "—",
        })  # fmt: skip
    return charts


def sparkline(points: list[tuple[float, float]], *, width: int = 80, height: int = 18) -> SafeString:
    """A tiny line of requests/s for list rows (the last hour); flat when idle."""
    if len(points) < 2:
        points = [(0.0, 0.0), (1.0, 0.0)]
    t0, t1 = points[0][0], points[-1][0]
    top = max(value for _, value in points) or 1.0
    span = (t1 - t0) or 1.0
    line = " ".join(f"{(t - t0) / span * width:.1f},{height - 1 - value / top * (height - 2):.1f}" for t, value in points)
    return mark_safe(  # noqa: S308 - numbers only
        f'<svg class="sparkline" width="{width}" height="{height}" viewBox="0 0 {width} {height}" aria-hidden="true">'
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.2" points="{line}"/></svg>'
    )
