"""Server-rendered pages around the review app: errors (403/404), the worklist, and per-model
quality over time with SVG plots (no script needed), production vs shadow versions included.
Every value is HTML-escaped."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

_STYLE = """
body{font:14px system-ui,sans-serif;margin:0;background:#15181c;color:#e6e6e6}
header{padding:10px 16px;background:#20252b;display:flex;gap:16px;align-items:baseline}
header h1{font-size:16px;margin:0}main{padding:16px}a{color:#7cc4ff}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #333}
th{color:#aaa;font-weight:600}.muted{color:#999}.box{max-width:640px;margin:10vh auto;padding:24px;
background:#20252b;border-radius:8px}.legend span{margin-right:16px}svg{background:#1b1f24;border-radius:6px}
"""

_SMALL_TEXT = 'fill="#999" font-size="11"'
_SERIES_COLOURS = ("#7cc4ff", "#ffb347", "#9be37d", "#ff7c9c", "#c89bff", "#ffe066")


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)} · radloop</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def message_page(title: str, message: str, hint: str = "") -> str:
    """A page that explains why the review cannot open (invalid or expired link, unknown study)."""
    extra = f"<p class=muted>{escape(hint)}</p>" if hint else ""
    return _page(title, f"<div class=box><h1>{escape(title)}</h1><p>{escape(message)}</p>{extra}</div>")


def worklist_page(reviewer: str, rows: Sequence[dict[str, Any]]) -> str:
    """The results awaiting review, each a link into the review app."""
    cells = (
        "patient_name",
        "patient_id",
        "accession_number",
        "study_date",
        "series_description",
        "pipeline",
        "created_at",
    )
    body_rows = (
        "".join(
            "<tr>"
            + "".join(f"<td>{escape(str(row.get(c) or ''))}</td>" for c in cells)
            + f"<td><a href='/review/app/?result={int(row['result_id'])}'>Review</a></td></tr>"
            for row in rows
        )
        or f"<tr><td colspan={len(cells) + 1} class=muted>Nothing awaits review.</td></tr>"
    )
    head = "".join(f"<th>{escape(c.replace('_', ' '))}</th>" for c in cells) + "<th></th>"
    return _page(
        "Worklist",
        (
            f"<header><h1>Results awaiting review</h1><span class=muted>{escape(reviewer)}</span>"
            "<a href='/review/quality'>Model quality</a></header>"
            f"<main><table><thead><tr>{head}</tr></thead><tbody>{body_rows}</tbody></table></main>"
        ),
    )


def quality_page(
    models: Sequence[dict[str, Any]], period: str, shadows: Sequence[dict[str, Any]] = ()
) -> str:
    """Per-model acceptance rate and mean Dice of edits over time: two SVG plots and a table; and,
    when shadow versions ran, production vs shadow against the reviewed final masks (a third plot)."""
    if not models:
        content = "<p class=muted>No review decisions yet.</p>"
    else:
        legend = "".join(
            f"<span style='color:{_SERIES_COLOURS[i % len(_SERIES_COLOURS)]}'>■ {escape(_name(m))}</span>"
            for i, m in enumerate(models)
        )
        content = (
            f"<p class=legend>{legend}</p>"
            f"<h2>Acceptance rate per {escape(period)}</h2>{_plot(models, 'acceptance_rate')}"
            f"<h2>Mean Dice of edited results per {escape(period)}</h2>{_plot(models, 'mean_dice_edited')}"
            f"<h2>All decisions</h2>{_summary_table(models)}"
        )
    if shadows:
        content += _shadow_section(shadows, period)
    return _page(
        "Model quality",
        (
            "<header><h1>Model quality over time</h1><a href='/review/worklist'>Worklist</a>"
            "<span class=muted>per <a href='?period=day'>day</a> · <a href='?period=week'>week</a> · "
            "<a href='?period=month'>month</a></span></header>"
            f"<main>{content}</main>"
        ),
    )


def _name(model: dict[str, Any]) -> str:
    version = model.get("model_version") or "?"
    return f"{model.get('model_name') or 'unknown'} {version}"


def _plot(models: Sequence[dict[str, Any]], key: str, width: int = 720, height: int = 220) -> str:
    """An SVG line plot of ``key`` (a value in [0, 1]) per period, one line per model."""
    left, right, top, bottom = 48, 48, 12, 36
    dates = sorted({p["period_start"] for m in models for p in m["points"]})
    if not dates:
        return ""
    step = (width - left - right) / max(len(dates) - 1, 1)

    def x(d: str) -> float:
        return left + dates.index(d) * step if len(dates) > 1 else left + (width - left - right) / 2

    def y(v: float) -> float:
        return top + (1.0 - v) * (height - top - bottom)

    grid = "".join(
        f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#333"/>'
        f'<text x="{left - 6}" y="{y(v) + 4:.1f}" {_SMALL_TEXT} text-anchor="end">{v:.2f}</text>'
        for v in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    labels = "".join(
        f'<text x="{x(d):.1f}" y="{height - 12}" {_SMALL_TEXT} text-anchor="middle">{escape(d)}</text>'
        for d in dates
    )
    colours = [_SERIES_COLOURS[i % len(_SERIES_COLOURS)] for i in range(len(models))]
    lines = "".join(_series(m["points"], key, c, x, y) for m, c in zip(models, colours, strict=True))
    return (
        f'<svg role="img" aria-label="{escape(key)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{grid}{labels}{lines}</svg>'
    )


def _series(points: Sequence[dict[str, Any]], key: str, colour: str, x: Any, y: Any) -> str:
    """One model's line and dots (each dot's tooltip: period and value)."""
    present = [(p["period_start"], float(p[key])) for p in points if p.get(key) is not None]
    if not present:
        return ""
    path = " ".join(f"{'M' if i == 0 else 'L'}{x(d):.1f},{y(v):.1f}" for i, (d, v) in enumerate(present))
    dots = "".join(
        f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}">'
        f"<title>{escape(d)}: {v:.3f}</title></circle>"
        for d, v in present
    )
    return f'<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"/>{dots}'


def _summary_table(models: Sequence[dict[str, Any]]) -> str:
    def fmt(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else escape(str(value))

    rows = "".join(
        f"<tr><td>{escape(_name(m))}</td>"
        + "".join(
            f"<td>{fmt(m['overall'][k])}</td>"
            for k in (
                "reviews",
                "accepted",
                "edited",
                "rejected",
                "acceptance_rate",
                "mean_dice_edited",
                "mean_abs_volume_change_pct",
            )
        )
        + "</tr>"
        for m in models
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "model",
            "decisions",
            "accepted",
            "edited",
            "rejected",
            "acceptance rate",
            "mean Dice (edits)",
            "mean |Δ volume| %",
        )
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


_SHADOW_LINES = (
    ("production_dice", "production vs final", "#7cc4ff"),
    ("shadow_dice", "shadow vs final", "#ffb347"),
    ("agreement", "shadow vs production", "#9be37d"),
)
"""What the production-vs-shadow plot draws per comparison: key, legend text, colour."""
_DASHES = ("", "7 4", "2 3", "10 3 2 3")
"""One stroke pattern per comparison (model, production version, shadow version)."""


def _shadow_section(shadows: Sequence[dict[str, Any]], period: str) -> str:
    """Production vs shadow: per comparison (model, production version, shadow version) the mean
    Dice of each against the reviewed final masks and their agreement, per period; and a table."""
    dates = sorted({p["period_start"] for q in shadows for p in q["points"]})
    lines, legend = [], []
    for i, quality in enumerate(shadows):
        dash = _DASHES[i % len(_DASHES)]
        for key, text, colour in _SHADOW_LINES:
            label = f"{_shadow_name(quality)}: {text}"
            points = [(p["period_start"], p[key]) for p in quality["points"] if p.get(key) is not None]
            lines.append((label, colour, dash, points))
            legend.append(
                f"<span style='color:{colour}'><svg width=28 height=8><line x1=0 x2=28 y1=4 y2=4 "
                f"stroke='{colour}' stroke-width=2 stroke-dasharray='{dash}'/></svg> {escape(label)}</span>"
            )
    return (
        f"<h2>Production vs shadow per {escape(period)}</h2>"
        "<p class=muted>Dice against the reviewed final mask (accepted = the production mask, edited = "
        "the edit), means over the same cases; shadow vs production needs no review. Shadow results "
        "are never delivered.</p>"
        f"<p class=legend>{''.join(legend)}</p>"
        f"{_line_chart(dates, lines, 'production vs shadow')}"
        f"{_shadow_table(shadows)}"
    )


def _shadow_name(quality: dict[str, Any]) -> str:
    name = quality.get("model_name") or "unknown"
    return (
        f"{name} {quality.get('production_version') or '?'} vs SHADOW {quality.get('shadow_version') or '?'}"
    )


def _line_chart(
    dates: Sequence[str],
    lines: Sequence[tuple[str, str, str, Sequence[tuple[str, float]]]],
    label: str,
    width: int = 720,
    height: int = 240,
) -> str:
    """An SVG plot of values in [0, 1] per period: one (label, colour, dash, points) line each. The
    axis starts below the lowest value (at 0 unless every value is above 0.5), so that Dices close
    to 1 stay apart."""
    left, right, top, bottom = 48, 48, 12, 36
    if not dates:
        return ""
    values = [v for _, _, _, points in lines for _, v in points]
    lowest = min(values, default=0.0)
    floor = max(0.0, int(lowest * 20) / 20 - 0.05) if lowest > 0.5 else 0.0
    span = width - left - right
    step = span / max(len(dates) - 1, 1)

    def x(d: str) -> float:
        return left + dates.index(d) * step if len(dates) > 1 else left + span / 2

    def y(v: float) -> float:
        return top + (1.0 - max(floor, min(1.0, v))) / (1.0 - floor) * (height - top - bottom)

    grid = "".join(
        f'<line x1="{left}" x2="{width - right}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#333"/>'
        f'<text x="{left - 6}" y="{y(v) + 4:.1f}" {_SMALL_TEXT} text-anchor="end">{v:.2f}</text>'
        for v in (floor + (1.0 - floor) * k / 4 for k in range(5))
    )
    ticks = "".join(
        f'<text x="{x(d):.1f}" y="{height - 12}" {_SMALL_TEXT} text-anchor="middle">{escape(d)}</text>'
        for d in dates
    )
    drawn = []
    for name, colour, dash, points in lines:
        if not points:
            continue
        path = " ".join(f"{'M' if i == 0 else 'L'}{x(d):.1f},{y(v):.1f}" for i, (d, v) in enumerate(points))
        dots = "".join(
            f'<circle cx="{x(d):.1f}" cy="{y(v):.1f}" r="3.5" fill="{colour}">'
            f"<title>{escape(name)}, {escape(d)}: {v:.3f}</title></circle>"
            for d, v in points
        )
        drawn.append(
            f'<g data-line="{escape(name)}"><path d="{path}" fill="none" stroke="{colour}" stroke-width="2" '
            f'stroke-dasharray="{dash}"/>{dots}</g>'
        )
    return (
        f'<svg role="img" aria-label="{escape(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{grid}{ticks}{"".join(drawn)}</svg>'
    )


def _shadow_table(shadows: Sequence[dict[str, Any]]) -> str:
    def fmt(value: Any) -> str:
        return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else escape(str(value))

    keys = ("cases", "with_final", "production_dice", "shadow_dice", "agreement", "unreadable")
    rows = "".join(
        f"<tr><td>{escape(_shadow_name(q))}</td>"
        + "".join(f"<td>{fmt(q['overall'][k])}</td>" for k in keys)
        + "</tr>"
        for q in shadows
    )
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "production vs shadow",
            "series",
            "with a final mask",
            "Dice production vs final",
            "Dice shadow vs final",
            "Dice shadow vs production",
            "unreadable",
        )
    )
    return f"<table class=shadow><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
