"""The report as one self-contained HTML page: accuracy over time per version, and drift.

``greenroom report MODEL --html out.html`` writes what :func:`render` returns. The page is
meant to be mailed, attached to a ticket or opened from a CI artifact, so it holds no
JavaScript and no external asset: the charts are inline SVG, the style an inline sheet,
and a tooltip is an SVG ``<title>``. It is also well-formed XML (self-closed void tags,
numeric character references only), so that tests can read it with ``xml.etree``.

Model names, versions, roles and feature names come from users: every text is escaped,
and characters that XML forbids are replaced, so a name can neither break the page nor
inject markup.

Colours are fixed (the primary's always :data:`PRIMARY_COLOUR`, the others from
:data:`PALETTE` in a stable order, bands from :data:`BAND_COLOURS`) and each plot area is
painted with a background that appears nowhere else, so that a test can find the charts
in a screenshot and check what a person would see.
"""

from __future__ import annotations

import html
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.drift import PSI_MAJOR, PSI_MODERATE, FeatureDrift

# Colours: distinct hues, none shared between the lines, the bands and the backgrounds.
PRIMARY_COLOUR = "#1f4fd1"
PALETTE = ("#f08c00", "#8e3ec9", "#0c9c9c", "#8c5a2b", "#d6338c", "#5c940d")
BAND_COLOURS = {"stable": "#2f9e44", "moderate": "#f5b700", "major": "#e03131"}
BAND_BACKGROUNDS = {"stable": "#ebfbee", "moderate": "#fff6d6", "major": "#ffeaea"}
PLOT_BACKGROUND = "#f4f7fc"
GRID = "#d5dae3"
AXIS = "#59606e"
MUTED = "#6b7280"
DRIFTED_MARK = "#a61e4d"
EMPTY_BACKGROUND = "#f7f7f4"  # where a chart would be, when there is nothing to draw

# Geometry of the accuracy chart: a fixed size, the plot area at a fixed place inside it.
CHART_W, CHART_H = 960, 380
PLOT_X, PLOT_Y, PLOT_W, PLOT_H = 70, 20, 640, 290
POINT_PAD = 16  # first and last bucket sit this far inside the plot area
LEGEND_X = PLOT_X + PLOT_W + 24

# Geometry of the drift chart: one row per feature.
DRIFT_W = 960
DRIFT_LABEL_W, DRIFT_PLOT_W = 220, 520
DRIFT_TOP, DRIFT_ROW_H, DRIFT_BAR_H, DRIFT_BOTTOM = 36, 28, 16, 40
DRIFT_MESSAGE_H = 160  # the chart's place when there is no bar to draw
LABEL_CHARS = 30

NO_ACCURACY = "No labelled predictions in this time range: nothing to plot."
NO_DRIFT = "No drift computed: no reference sample or no live inputs for this model."

Task = Literal["classification", "regression"]


@dataclass(frozen=True, slots=True)
class Point:
    """One version's accuracy (or MAE) in one time bucket; ``value`` None when unlabelled."""

    start: float  # unix seconds, bucket start
    version: str
    labelled: int  # labelled rows in the bucket
    value: float | None  # accuracy (classification) or MAE (regression)


@dataclass(frozen=True, slots=True)
class Picture:
    """Everything the page shows; built by the report command, drawn by :func:`render`."""

    model: str
    task: Task
    bucket: Literal["hour", "day"]
    bucket_s: float
    roles: dict[str, str]  # version -> "primary" | "shadow" | "canary" | ""
    points: list[Point]
    drift: list[FeatureDrift]
    drift_version: str | None  # whose reference the drift compares against
    generated_at: float


def render(picture: Picture) -> str:
    """The whole page, as text: header, accuracy chart, drift chart and table."""
    body = "\n".join(
        [
            _header(picture),
            _accuracy_section(picture),
            _drift_section(picture),
        ]
    )
    return _document(f"Greenroom report: {picture.model}", body)


# --- text ------------------------------------------------------------------------------

_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def esc(text: object) -> str:
    """Escaped for both text and attributes; characters XML forbids become U+FFFD."""
    return html.escape(_NOT_XML.sub("\ufffd", str(text)), quote=True)


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    """A label that fits its column; the full text goes in a tooltip beside it."""
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _when(t: float, fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """Times in UTC: a report is read by people in several zones."""
    return time.strftime(fmt, time.gmtime(t))


def _num(value: float | None, fmt: str) -> str:
    return "\u2014" if value is None or not math.isfinite(value) else format(value, fmt)


def _natural(version: str) -> tuple[object, ...]:
    """Sorts v2 before v10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", version))


# --- page ------------------------------------------------------------------------------

_STYLE = """
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; color: #1f2430;
       background: #ffffff; margin: 24px; }
h1 { font-size: 22px; margin: 0 0 12px 0; }
h2 { font-size: 17px; margin: 28px 0 6px 0; }
p.note { color: #6b7280; margin: 4px 0 10px 0; font-size: 13px; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 4px 16px;
          margin: 0; font-size: 14px; }
dl.meta dt { color: #6b7280; }
dl.meta dd { margin: 0; }
svg.chart { display: block; background: #ffffff; }
table.drift { border-collapse: collapse; font-size: 13px; margin-top: 12px; }
table.drift th, table.drift td { border: 1px solid #d5dae3; padding: 4px 8px; text-align: left; }
table.drift th { white-space: nowrap; background: #f4f5f7; }
table.drift td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.drift tr.drifted td { font-weight: bold; }
.message { color: #6b7280; font-style: italic; }
"""


def _document(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8" />\n'
        f"<title>{esc(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _deployment(roles: dict[str, str]) -> str:
    """``primary v2 · shadow v3, v4``, in role order; or a plain "none"."""
    parts = []
    for role in ("primary", "canary", "shadow"):
        versions = sorted((v for v, r in roles.items() if r == role), key=_natural)
        if versions:
            parts.append(f"{role} {', '.join(versions)}")
    return " \u00b7 ".join(parts) if parts else "none"


def _time_range(p: Picture) -> str:
    if not p.points:
        return "no data"
    first = min(pt.start for pt in p.points)
    last = max(pt.start for pt in p.points) + p.bucket_s
    return f"{_when(first)} \u2192 {_when(last)}"


def _header(p: Picture) -> str:
    rows = [
        ("Model", p.model),
        ("Task", p.task),
        ("Time range", _time_range(p)),
        ("Bucket", f"{p.bucket} ({p.bucket_s:g} s)"),
        ("Generated at", _when(p.generated_at, "%Y-%m-%d %H:%M:%S UTC")),
        ("Current deployment", _deployment(p.roles)),
    ]
    items = "\n".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return (
        f'<header>\n<h1>Greenroom report: {esc(p.model)}</h1>\n<dl class="meta">\n{items}\n</dl>\n'
        "</header>"
    )


def _svg(svg_id: str, width: int, height: int, label: str, content: Iterable[str]) -> str:
    inner = "\n".join(content)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" id="{svg_id}" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}" '
        f'font-family="DejaVu Sans, Liberation Sans, Arial, sans-serif" font-size="12">\n'
        f"{inner}\n</svg>"
    )


def _message_svg(svg_id: str, width: int, height: int, lines: Sequence[str]) -> str:
    """A chart-sized blank with a message, so an empty report says so where the chart goes."""
    mid = height / 2 - (len(lines) - 1) * 10
    texts = [
        f'<text x="{width / 2:g}" y="{mid + 20 * i:g}" text-anchor="middle" fill="{MUTED}" '
        f'font-size="{15 if i == 0 else 13}">{esc(line)}</text>'
        for i, line in enumerate(lines)
    ]
    frame = (
        f'<rect class="empty" x="0.5" y="0.5" width="{width - 1}" height="{height - 1}" '
        f'fill="{EMPTY_BACKGROUND}" stroke="{GRID}" />'
    )
    return _svg(svg_id, width, height, lines[0], [frame, *texts])


# --- accuracy over time ----------------------------------------------------------------


def role_of(p: Picture, version: str) -> str:
    return p.roles.get(version, "")


def versions(p: Picture) -> list[str]:
    """Versions to draw: primary first, then canary, shadows, the rest; v2 before v10."""
    names = {pt.version for pt in p.points} | {v for v, r in p.roles.items() if r}
    order = {"primary": 0, "canary": 1, "shadow": 2}
    return sorted(names, key=lambda v: (order.get(role_of(p, v), 3), _natural(v)))


def colours(p: Picture) -> dict[str, str]:
    """The line colour of each version: the primary's is fixed, the others take turns."""
    result: dict[str, str] = {}
    others = 0
    for v in versions(p):
        if role_of(p, v) == "primary":
            result[v] = PRIMARY_COLOUR
        else:
            result[v] = PALETTE[others % len(PALETTE)]
            others += 1
    return result


def _stroke(role: str) -> str:
    """Primary solid and thick; shadows dashed; a canary solid but thin; others dotted."""
    if role == "primary":
        return 'stroke-width="5"'
    if role == "shadow":
        return 'stroke-width="3" stroke-dasharray="10 6"'
    if role == "canary":
        return 'stroke-width="3"'
    return 'stroke-width="2.5" stroke-dasharray="2 5"'


def _valued(points: Iterable[Point]) -> list[Point]:
    """Points with something to plot; an unlabelled bucket is a gap, never a zero."""
    return [
        pt for pt in points if pt.labelled > 0 and pt.value is not None and math.isfinite(pt.value)
    ]


@dataclass(frozen=True, slots=True)
class _Scale:
    """Maps bucket starts and values to pixels of the plot area."""

    t0: float
    t1: float
    y0: float
    y1: float

    def x(self, t: float) -> float:
        if self.t1 <= self.t0:
            return PLOT_X + PLOT_W / 2
        frac = (t - self.t0) / (self.t1 - self.t0)
        return PLOT_X + POINT_PAD + frac * (PLOT_W - 2 * POINT_PAD)

    def y(self, value: float) -> float:
        frac = (value - self.y0) / (self.y1 - self.y0)
        return PLOT_Y + (1 - min(max(frac, 0.0), 1.0)) * PLOT_H


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``value``."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1.0, 2.0, 2.5, 5.0, 10.0):
        if step * power >= value * (1 - 1e-9):
            return step * power
    return 10.0 * power


def _y_range(p: Picture, points: Sequence[Point]) -> tuple[float, float, float]:
    """(low, high, tick step): accuracy always 0..1; MAE from 0 to a round ceiling."""
    if p.task == "classification":
        return 0.0, 1.0, 0.1
    top = nice_ceiling(max((pt.value or 0.0) for pt in points) * 1.1)
    return 0.0, top, top / 5


def _y_axis(p: Picture, scale: _Scale, step: float) -> list[str]:
    out = []
    ticks = round((scale.y1 - scale.y0) / step)
    for i in range(ticks + 1):
        value = scale.y0 + i * step
        y = round(scale.y(value)) + 0.5
        out.append(
            f'<line x1="{PLOT_X}" y1="{y}" x2="{PLOT_X + PLOT_W}" y2="{y}" stroke="{GRID}" />'
        )
        out.append(
            f'<text x="{PLOT_X - 8}" y="{y + 4}" text-anchor="end" fill="{AXIS}">'
            f"{esc(format(value, '.2f' if p.task == 'classification' else '.3g'))}</text>"
        )
    name = "accuracy" if p.task == "classification" else "MAE (lower is better)"
    mid = PLOT_Y + PLOT_H / 2
    out.append(
        f'<text x="16" y="{mid:g}" transform="rotate(-90 16 {mid:g})" text-anchor="middle" '
        f'fill="{AXIS}">{esc(name)}</text>'
    )
    return out


def _tick_label(p: Picture, t: float, x: float) -> str:
    """Hour buckets show the hour over the date; day buckets the date over the year."""
    top, bottom = ("%H:%M", "%d %b") if p.bucket == "hour" else ("%d %b", "%Y")
    y = PLOT_Y + PLOT_H + 18
    return (
        f'<text x="{x:.1f}" y="{y}" text-anchor="middle" fill="{AXIS}">'
        f"<tspan>{esc(_when(t, top))}</tspan>"
        f'<tspan x="{x:.1f}" dy="15">{esc(_when(t, bottom))}</tspan></text>'
    )


# Label every k-th bucket, k one of these, so that labels fall on round hours or weeks.
_TICK_EVERY = {
    "hour": (1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720),
    "day": (1, 2, 7, 14, 28, 56, 91, 182, 364),
}


def _tick_every(p: Picture, buckets: int) -> int:
    """Labels at most one per 80 px, else they overlap."""
    needed = math.ceil(buckets / max(1, PLOT_W // 80))
    return next((k for k in _TICK_EVERY[p.bucket] if k >= needed), needed)


def _x_axis(p: Picture, scale: _Scale) -> list[str]:
    """A tick per bucket when few, else every k-th bucket counted from the epoch (UTC)."""
    step = _step(p)
    buckets = round((scale.t1 - scale.t0) / step) + 1
    every = _tick_every(p, buckets)
    first = -round(scale.t0 / step) % every
    bottom = PLOT_Y + PLOT_H
    out = [
        f'<line x1="{PLOT_X}" y1="{bottom}.5" x2="{PLOT_X + PLOT_W}" y2="{bottom}.5" '
        f'stroke="{AXIS}" />'
    ]
    for i in range(first, buckets, every):
        t = scale.t0 + i * step
        x = scale.x(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 5}" stroke="{AXIS}" />'
        )
        out.append(_tick_label(p, t, x))
    return out


def _step(p: Picture) -> float:
    return p.bucket_s if p.bucket_s > 0 else 3600.0


def _radius(p: Picture, role: str, scale: _Scale) -> float:
    """Markers shrink when buckets are dense, so that a month of hours stays a line."""
    spacing = scale.x(scale.t0 + _step(p)) - scale.x(scale.t0)
    largest = 5.0 if role == "primary" else 4.0
    return largest if scale.t1 <= scale.t0 else min(largest, max(1.5, spacing / 3))


def _segments(points: Sequence[Point], bucket_s: float) -> list[list[Point]]:
    """Runs of consecutive buckets; a missing or unlabelled bucket breaks the line."""
    runs: list[list[Point]] = []
    for pt in sorted(points, key=lambda q: q.start):
        if runs and pt.start - runs[-1][-1].start <= bucket_s * 1.5:
            runs[-1].append(pt)
        else:
            runs.append([pt])
    return runs


def _tooltip(p: Picture, pt: Point) -> str:
    metric = "accuracy" if p.task == "classification" else "MAE"
    role = role_of(p, pt.version) or "no role"
    return (
        f"{pt.version} ({role}) \u00b7 {_when(pt.start)} \u00b7 "
        f"{metric} {_num(pt.value, '.3f')} \u00b7 {pt.labelled} labelled"
    )


def _series(p: Picture, version: str, colour: str, scale: _Scale) -> list[str]:
    points = _valued(pt for pt in p.points if pt.version == version)
    role = role_of(p, version)
    out = [f'<g class="series" data-version="{esc(version)}" data-role="{esc(role)}">']
    for run in _segments(points, _step(p)):
        if len(run) > 1:
            coords = " ".join(f"{scale.x(q.start):.1f},{scale.y(q.value or 0):.1f}" for q in run)
            out.append(
                f'<polyline points="{coords}" fill="none" stroke="{colour}" {_stroke(role)} '
                'stroke-linejoin="round" stroke-linecap="round" />'
            )
    radius = _radius(p, role, scale)
    for q in points:
        out.append(
            f'<circle cx="{scale.x(q.start):.1f}" cy="{scale.y(q.value or 0):.1f}" r="{radius:g}" '
            f'fill="{colour}"><title>{esc(_tooltip(p, q))}</title></circle>'
        )
    out.append("</g>")
    return out


def _legend(p: Picture, palette: dict[str, str]) -> list[str]:
    """One row per version: a sample of its line, the version, its role and label count."""
    out = []
    for i, v in enumerate(versions(p)):
        y = PLOT_Y + 10 + i * 36
        role = role_of(p, v)
        labelled = sum(pt.labelled for pt in p.points if pt.version == v)
        out.append(
            f'<line x1="{LEGEND_X}" y1="{y}" x2="{LEGEND_X + 34}" y2="{y}" '
            f'stroke="{palette[v]}" {_stroke(role)} />'
        )
        out.append(
            f'<text x="{LEGEND_X + 42}" y="{y + 4}" font-weight="bold"><title>{esc(v)}</title>'
            f"{esc(_short(v, 20))}</text>"
        )
        out.append(
            f'<text x="{LEGEND_X + 42}" y="{y + 19}" fill="{MUTED}">'
            f"{esc(role or 'no role')} \u00b7 {labelled} labelled</text>"
        )
    return out


def _accuracy_svg(p: Picture) -> str:
    points = _valued(p.points)
    if not points:
        return _message_svg("accuracy-chart", CHART_W, CHART_H, [NO_ACCURACY])
    low, high, step = _y_range(p, points)
    starts = [pt.start for pt in p.points]
    scale = _Scale(min(starts), max(starts), low, high)
    palette = colours(p)
    content = [
        f'<rect id="accuracy-plot" x="{PLOT_X}" y="{PLOT_Y}" width="{PLOT_W}" '
        f'height="{PLOT_H}" fill="{PLOT_BACKGROUND}" />',
        *_y_axis(p, scale, step),
        *_x_axis(p, scale),
    ]
    # The primary last, so that it is drawn over the candidates it is compared with.
    for v in reversed(versions(p)):
        content.extend(_series(p, v, palette[v], scale))
    content.extend(_legend(p, palette))
    label = f"{'Accuracy' if p.task == 'classification' else 'MAE'} over time per version"
    return _svg("accuracy-chart", CHART_W, CHART_H, label, content)


def _accuracy_section(p: Picture) -> str:
    if p.task == "classification":
        title, note = "Accuracy over time", "Share of labelled rows predicted right, per bucket."
    else:
        title, note = "Mean absolute error over time", "Lower is better, per bucket."
    note += " Gaps are buckets with no labelled rows. Hover a point for its labelled count."
    return (
        f'<section id="accuracy">\n<h2>{esc(title)}</h2>\n<p class="note">{esc(note)}</p>\n'
        f"{_accuracy_svg(p)}\n</section>"
    )


# --- drift -----------------------------------------------------------------------------


def _psi_max(rows: Sequence[FeatureDrift]) -> float:
    """The PSI axis: up to 0.3 always (the moderate and major bands show), beyond it up
    to 1 at most."""
    largest = max((r.psi for r in rows if r.psi is not None and math.isfinite(r.psi)), default=0)
    return max(0.3, min(1.0, nice_ceiling(largest * 1.1)))


def _psi_x(psi: float, top: float) -> float:
    return DRIFT_LABEL_W + min(max(psi, 0.0), top) / top * DRIFT_PLOT_W


def _bands(top: float, height: int) -> list[str]:
    """Stable, moderate and major as background areas, with the 0.1 and 0.2 lines."""
    edges = [
        ("stable", 0.0, PSI_MODERATE),
        ("moderate", PSI_MODERATE, PSI_MAJOR),
        ("major", PSI_MAJOR, top),
    ]
    out = []
    for band, lo, hi in edges:
        x0, x1 = round(_psi_x(lo, top)), round(_psi_x(hi, top))
        out.append(
            f'<rect class="band-{band}" x="{x0}" y="{DRIFT_TOP}" width="{x1 - x0}" '
            f'height="{height}" fill="{BAND_BACKGROUNDS[band]}" />'
        )
        out.append(
            f'<text x="{(x0 + x1) / 2:g}" y="{DRIFT_TOP - 10}" text-anchor="middle" '
            f'fill="{BAND_COLOURS[band]}" font-weight="bold">{band}</text>'
        )
    for threshold in (PSI_MODERATE, PSI_MAJOR):
        x = round(_psi_x(threshold, top)) + 0.5
        out.append(
            f'<line x1="{x}" y1="{DRIFT_TOP}" x2="{x}" y2="{DRIFT_TOP + height}" '
            f'stroke="{AXIS}" stroke-dasharray="4 3" />'
        )
    return out


def _psi_axis(top: float, bottom: int) -> list[str]:
    step = 0.05 if top <= 0.3 else 0.1
    out = [
        f'<line x1="{DRIFT_LABEL_W}" y1="{bottom}.5" x2="{DRIFT_LABEL_W + DRIFT_PLOT_W}" '
        f'y2="{bottom}.5" stroke="{AXIS}" />'
    ]
    for i in range(round(top / step) + 1):
        x = round(_psi_x(i * step, top)) + 0.5
        out.append(f'<line x1="{x}" y1="{bottom}" x2="{x}" y2="{bottom + 5}" stroke="{AXIS}" />')
        out.append(
            f'<text x="{x}" y="{bottom + 18}" text-anchor="middle" fill="{AXIS}">'
            f"{i * step:.2f}</text>"
        )
    out.append(
        f'<text x="{DRIFT_LABEL_W + DRIFT_PLOT_W / 2:g}" y="{bottom + 34}" text-anchor="middle" '
        f'fill="{AXIS}">PSI (population stability index)</text>'
    )
    return out


def _drift_label(row: FeatureDrift, mid: float) -> str:
    """The feature's name, bold when drifted, shortened to its column (full in a tooltip)."""
    weight = "bold" if row.drifted else "normal"
    return (
        f'<text x="{DRIFT_LABEL_W - 10}" y="{mid + 4:g}" text-anchor="end" '
        f'font-weight="{weight}"><title>{esc(row.feature)}</title>{esc(_short(row.feature))}</text>'
    )


def _drift_bar(row: FeatureDrift, i: int, top: float) -> list[str]:
    """The bar (or why there is none), its value and, if drifted, a mark."""
    mid = DRIFT_TOP + i * DRIFT_ROW_H + DRIFT_ROW_H / 2
    out = [_drift_label(row, mid)]
    if row.psi is None or row.band is None or not math.isfinite(row.psi):
        why = row.note or "PSI not available"
        out.append(
            f'<text x="{DRIFT_LABEL_W + 8}" y="{mid + 4:g}" fill="{MUTED}" font-style="italic">'
            f"n/a: {esc(why)}</text>"
        )
        return out
    end = _psi_x(row.psi, top)
    y = round(mid - DRIFT_BAR_H / 2)
    width = max(1, round(end - DRIFT_LABEL_W))
    clipped = "\u00bb " if row.psi > top else ""
    tip = f"{row.feature}: PSI {row.psi:.3f}, {row.band}{', drifted' if row.drifted else ''}"
    out.append(
        f'<rect class="bar bar-{row.band}" x="{DRIFT_LABEL_W}" y="{y}" width="{width}" '
        f'height="{DRIFT_BAR_H}" fill="{BAND_COLOURS[row.band]}"><title>{esc(tip)}</title></rect>'
    )
    mark, colour, weight = (
        (" \u25b2 DRIFTED", DRIFTED_MARK, "bold") if row.drifted else ("", AXIS, "normal")
    )
    out.append(
        f'<text x="{DRIFT_LABEL_W + width + 6}" y="{mid + 4:g}" fill="{colour}" '
        f'font-weight="{weight}">{clipped}{row.psi:.3f}{mark}</text>'
    )
    return out


def _drift_svg(rows: Sequence[FeatureDrift]) -> str:
    if not rows:
        return _message_svg("drift-chart", DRIFT_W, DRIFT_MESSAGE_H, [NO_DRIFT])
    if all(r.psi is None for r in rows):
        notes = sorted({r.note or "PSI not available" for r in rows})
        lines = ["No PSI for any feature: the window is too small.", *notes]
        return _message_svg("drift-chart", DRIFT_W, DRIFT_MESSAGE_H, lines)
    top = _psi_max(rows)
    height = len(rows) * DRIFT_ROW_H
    content = [*_bands(top, height), *_psi_axis(top, DRIFT_TOP + height)]
    for i, row in enumerate(rows):
        content.extend(_drift_bar(row, i, top))
    total = DRIFT_TOP + height + DRIFT_BOTTOM
    return _svg("drift-chart", DRIFT_W, total, "PSI per feature", content)


_COLUMNS = (
    "feature",
    "kind",
    "test",
    "statistic",
    "p-value",
    "PSI",
    "band",
    "drifted",
    "rows (reference / live)",
    "note",
)


def _drift_row(r: FeatureDrift) -> str:
    cells = [
        (r.feature, ""),
        (r.kind, ""),
        (r.test, ""),
        (_num(r.statistic, ".4g"), "num"),
        (_num(r.p_value, ".3g"), "num"),
        (_num(r.psi, ".3f"), "num"),
        (r.band or "\u2014", ""),
        ("yes" if r.drifted else "no", ""),
        (f"{r.reference_rows} / {r.live_rows}", "num"),
        (r.note or "", ""),
    ]
    tds = "".join(
        f'<td class="{c}">{esc(text)}</td>' if c else f"<td>{esc(text)}</td>" for text, c in cells
    )
    return f'<tr class="drifted">{tds}</tr>' if r.drifted else f"<tr>{tds}</tr>"


def _drift_table(rows: Sequence[FeatureDrift]) -> str:
    if not rows:
        return ""  # the chart's place already says so
    head = "".join(f"<th>{esc(c)}</th>" for c in _COLUMNS)
    body = "\n".join(_drift_row(r) for r in rows)
    return (
        f'<table class="drift" id="drift-table">\n<thead><tr>{head}</tr></thead>\n'
        f"<tbody>\n{body}\n</tbody>\n</table>"
    )


def _drift_section(p: Picture) -> str:
    against = (
        f"Live inputs against the reference sample of version {p.drift_version}."
        if p.drift_version
        else "No reference version to compare live inputs against."
    )
    drifted = [r.feature for r in p.drift if r.drifted]
    summary = f"Drifted: {', '.join(drifted)}." if drifted else "No feature drifted."
    note = (
        f"{against} PSI below {PSI_MODERATE:g} is stable, "
        f"{PSI_MODERATE:g} to {PSI_MAJOR:g} moderate, {PSI_MAJOR:g} and above major. "
        f"{summary if p.drift else ''}"
    ).strip()
    return (
        f'<section id="drift">\n<h2>Input drift per feature</h2>\n'
        f'<p class="note">{esc(note)}</p>\n{_drift_svg(p.drift)}\n{_drift_table(p.drift)}\n'
        "</section>"
    )
