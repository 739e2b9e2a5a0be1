"""Small inline SVG bar charts for the operator page (no script, no external asset; HTML5 inline SVG)."""

from __future__ import annotations

from html import escape

from markupsafe import Markup

WIDTH, HEIGHT, PAD = 240, 64, 14


def bar_chart(values: list[float | None], labels: list[str], *, title: str, unit: str = "", kind: str = "") -> Markup:
    """One bar per night (a missing value leaves a gap), the latest value and the maximum written beside."""
    known = [v for v in values if v is not None]
    top = max(known) if known else 0
    n = max(len(values), 1)
    step = (WIDTH - 2) / n
    bars = []
    for i, (v, label) in enumerate(zip(values, labels, strict=True)):
        if v is None:
            continue
        h = 0 if top <= 0 else (HEIGHT - PAD - 2) * v / top
        bars.append(
            f"<rect x='{1 + i * step + step * 0.15:.1f}' y='{HEIGHT - 1 - h:.1f}' width='{step * 0.7:.1f}' "
            f"height='{max(h, 0.5):.1f}' class='bar {kind}'><title>{escape(label)}: {v:g}{escape(unit)}</title></rect>"
        )
    last = next((v for v in reversed(values) if v is not None), None)
    caption = f"{escape(title)}: {'—' if last is None else f'{last:g}{escape(unit)}'} (max {top:g})"
    return Markup(
        f"<figure class='chart' data-chart='{escape(kind or title)}'><svg viewBox='0 0 {WIDTH} {HEIGHT}' "
        f"width='{WIDTH}' height='{HEIGHT}' role='img' aria-label='{escape(title)}'>"
        f"<line x1='0' y1='{HEIGHT - 0.5}' x2='{WIDTH}' y2='{HEIGHT - 0.5}' class='axis'/>{''.join(bars)}</svg>"
        f"<figcaption>{caption}</figcaption></figure>"
    )
