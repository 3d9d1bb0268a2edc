"""HTML for the console's pages: escaped strings and inline SVG charts, no template engine, no CDN."""

from __future__ import annotations

from html import escape
from typing import Any, Iterable, Sequence

NAV = (("keys", "Keys"), ("spend", "Spend"), ("requests", "Requests"), ("routing", "Routing"), ("models", "Models"))


def e(v: Any) -> str:
    return "" if v is None else escape(str(v), quote=True)


def layout(base: str, title: str, body: str, *, active: str = "", who: str | None = None,
           csrf: str | None = None, admin: bool = True) -> str:
    nav = ""
    if who is not None:
        links = "".join(f'<a class="{"on" if k == active else ""}" href="{base}/{k}">{t}</a>' for k, t in NAV) \
            if admin else f'<a class="on" href="{base}/me">My key</a>'
        nav = (f'<nav>{links}<span class="who">{e(who)}</span>'
               f'<form method="post" action="{base}/logout">{hidden_csrf(csrf)}<button>Sign out</button></form></nav>')
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{e(title)} · doka console</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="stylesheet" href="{base}/static/console.css"></head><body>'
            f'<header><b>doka</b> console</header>{nav}<main><h1>{e(title)}</h1>{body}</main></body></html>')


def hidden_csrf(csrf: str | None) -> str:
    return f'<input type="hidden" name="csrf" value="{e(csrf)}">' if csrf else ""


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, raw_cols: set[int] = frozenset(),
          cls: str = "") -> str:
    """A table; cells are escaped except the columns in `raw_cols` (links, forms built here)."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw_cols else e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def bar_chart(points: Sequence[tuple[str, float]], *, title: str, unit: str = "", width: int = 600,
              height: int = 180) -> str:
    """An inline SVG bar chart (one bar per label), with a title and the max value labelled."""
    if not points:
        return f'<figure class="chart"><figcaption>{e(title)}</figcaption><p class="muted">no data</p></figure>'
    top = max(v for _, v in points) or 1.0
    n = len(points)
    gap, pad = 2, 24
    bw = max(1.0, (width - 2 * pad) / n - gap)
    bars = []
    for i, (label, v) in enumerate(points):
        h = (height - 2 * pad) * (v / top)
        x = pad + i * (bw + gap)
        y = height - pad - h
        bars.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}"><title>{e(label)}: '
                    f'{v:,.6g}{e(unit)}</title></rect>')
    labels = (f'<text x="{pad}" y="{height - 6}">{e(points[0][0])}</text>'
              f'<text x="{width - pad}" y="{height - 6}" text-anchor="end">{e(points[-1][0])}</text>'
              f'<text x="{pad}" y="14">max {top:,.6g}{e(unit)}</text>')
    return (f'<figure class="chart"><figcaption>{e(title)}</figcaption><svg role="img" viewBox="0 0 {width} {height}" '
            f'width="{width}" height="{height}">{"".join(bars)}{labels}</svg></figure>')


def money(v: float | None) -> str:
    return "" if v is None else f"${v:,.6f}"
