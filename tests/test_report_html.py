"""The HTML report, read as text and looked at as a picture.

The text tests parse the page (it is well-formed XML by design) and check escaping, the
empty cases and what each chart element says. The picture tests render known data, let
headless Chromium (Debian's, installed by ``make chromium``) screenshot the page, and
check the pixels a person would look at: where the lines run, which is above which,
which bar is long and in which colour, and that an empty page shows a message instead of
a chart. They fail, rather than skip, without Chromium: CI installs it.

The charts are found in the screenshot by their backgrounds, which are colours used
nowhere else on the page (``PLOT_BACKGROUND``, ``BAND_BACKGROUNDS``, ``EMPTY_BACKGROUND``).
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from gateway.drift import FeatureDrift, band_of
from gateway.report_html import (
    BAND_BACKGROUNDS,
    BAND_COLOURS,
    CHART_H,
    DRIFT_PLOT_W,
    DRIFT_ROW_H,
    DRIFTED_MARK,
    EMPTY_BACKGROUND,
    NO_ACCURACY,
    NO_DRIFT,
    PLOT_BACKGROUND,
    PLOT_H,
    PLOT_W,
    POINT_PAD,
    PRIMARY_COLOUR,
    Picture,
    Point,
    colours,
    nice_ceiling,
    render,
)

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium waits for a network this machine does not have.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
]
WIDTH = 1040
SVG = "{http://www.w3.org/2000/svg}"
T0 = 1764115200.0  # 2025-11-26 00:00 UTC
HOUR = 3600.0
BUCKETS = 24
GAP = 5  # the primary's bucket with no labels

Pixels = npt.NDArray[np.int16]
Mask = npt.NDArray[np.bool_]


# --- data ------------------------------------------------------------------------------


def feature(
    name: str, psi: float | None, *, drifted: bool = False, note: str | None = None
) -> FeatureDrift:
    band = None if psi is None else band_of(psi)
    return FeatureDrift(
        feature=name,
        kind="numeric",
        reference_rows=2000,
        live_rows=1500,
        psi=psi,
        band=band,
        test="ks",
        statistic=None if psi is None else 0.3 if drifted else 0.02,
        p_value=None if psi is None else 1e-12 if drifted else 0.41,
        drifted=drifted,
        note=note,
    )


def known_picture() -> Picture:
    """Primary v1 at 0.9 then 0.6 from halfway, one bucket unlabelled; shadow v2 at 0.95."""
    points = []
    for i in range(BUCKETS):
        start = T0 + i * HOUR
        if i == GAP:
            points.append(Point(start, "v1", 0, None))
        else:
            points.append(Point(start, "v1", 100 + i, 0.9 if i < BUCKETS // 2 else 0.6))
        points.append(Point(start, "v2", 50 + i, 0.95))
    drift = [
        feature("age", 0.02),
        feature("income", 0.45, drifted=True),
        feature("tenure", 0.05),
    ]
    return Picture(
        model="credit",
        task="classification",
        bucket="hour",
        bucket_s=HOUR,
        roles={"v1": "primary", "v2": "shadow"},
        points=points,
        drift=drift,
        drift_version="v1",
        generated_at=T0 + 86400 + 125,
    )


def empty_picture() -> Picture:
    return replace(known_picture(), points=[], drift=[], drift_version=None, roles={})


# --- reading the page as text ----------------------------------------------------------


def parse(page: str) -> ET.Element:
    """The page is well-formed XML: parsing it is the first check."""
    return ET.fromstring(page)


def svg(root: ET.Element, svg_id: str) -> ET.Element:
    found = [e for e in root.iter(f"{SVG}svg") if e.get("id") == svg_id]
    assert len(found) == 1, f"one <svg id={svg_id}> expected, got {len(found)}"
    return found[0]


def visible(element: ET.Element) -> str:
    """The text a person sees: without the ``<title>`` tooltips inside it."""
    parts = [element.text or ""]
    for child in element:
        if child.tag != f"{SVG}title":
            parts.append(visible(child))
        parts.append(child.tail or "")
    return "".join(parts)


def texts(element: ET.Element) -> list[str]:
    return [visible(e) for e in element.iter(f"{SVG}text")]


def series(root: ET.Element, version: str) -> ET.Element:
    chart = svg(root, "accuracy-chart")
    found = [g for g in chart.iter(f"{SVG}g") if g.get("data-version") == version]
    assert len(found) == 1
    return found[0]


def page_titles(element: ET.Element) -> str:
    return "\n".join("".join(t.itertext()) for t in element.iter(f"{SVG}title"))


def header(root: ET.Element) -> dict[str, str]:
    dl = next(e for e in root.iter("dl") if e.get("class") == "meta")
    terms = ["".join(e.itertext()) for e in dl.iter("dt")]
    values = ["".join(e.itertext()) for e in dl.iter("dd")]
    return dict(zip(terms, values, strict=True))


def table_rows(root: ET.Element) -> list[list[str]]:
    table = next(e for e in root.iter("table") if e.get("id") == "drift-table")
    return [["".join(c.itertext()) for c in tr] for tr in table.iter("tr")]


# --- text tests ------------------------------------------------------------------------


def test_page_is_self_contained() -> None:
    page = render(known_picture())
    root = parse(page)
    assert not list(root.iter("script"))
    assert not list(root.iter("link"))
    for e in root.iter():
        for name in e.attrib:
            local = name.rsplit("}", 1)[-1]
            assert local not in {"src", "href"}, (e.tag, name)
            assert not local.startswith("on"), (e.tag, name)
    style = "".join("".join(e.itertext()) for e in root.iter("style"))
    assert "url(" not in style and "@import" not in style
    assert "javascript:" not in page.lower()


def test_user_text_is_escaped() -> None:
    evil = "<script>alert(\"x\")</script> & 'q' \x01"
    shown = evil.replace("\x01", "\ufffd")
    picture = replace(
        known_picture(),
        model=evil,
        roles={"v1": "primary", evil: "shadow"},
        points=[*known_picture().points, Point(T0, evil, 7, 0.5), Point(T0 + HOUR, evil, 8, 0.5)],
        drift=[feature(evil, 0.3, drifted=True)],
        drift_version=evil,
    )
    page = render(picture)
    assert "<script" not in page and "\x01" not in page
    root = parse(page)
    assert "".join(next(root.iter("title")).itertext()) == f"Greenroom report: {shown}"
    assert header(root)["Model"] == shown
    assert header(root)["Current deployment"] == f"primary v1 \u00b7 shadow {shown}"
    assert series(root, shown).get("data-role") == "shadow"
    titles = ["".join(t.itertext()) for t in svg(root, "drift-chart").iter(f"{SVG}title")]
    assert shown in titles
    assert table_rows(root)[1][0] == shown
    note = next(e for e in root.iter("p") if e.get("class") == "note" and shown in (e.text or ""))
    assert f"version {shown}" in (note.text or "")


def test_unlabelled_bucket_is_a_gap_not_a_zero() -> None:
    root = parse(render(known_picture()))
    primary = series(root, "v1")
    lines = list(primary.iter(f"{SVG}polyline"))
    assert [len((line.get("points") or "").split()) for line in lines] == [GAP, BUCKETS - GAP - 1]
    circles = list(primary.iter(f"{SVG}circle"))
    assert len(circles) == BUCKETS - 1
    bottom = max(float(c.get("cy") or 0) for c in circles)
    assert all(float(c.get("cy") or 0) <= bottom for c in circles)
    assert "accuracy 0.000" not in page_titles(primary)


def test_each_point_has_a_tooltip_with_its_labelled_count() -> None:
    root = parse(render(known_picture()))
    for version, role in (("v1", "primary"), ("v2", "shadow")):
        for circle in series(root, version).iter(f"{SVG}circle"):
            title = "".join(next(circle.iter(f"{SVG}title")).itertext())
            assert title.startswith(f"{version} ({role}) \u00b7 2025-11-26 ")
            assert title.endswith(" labelled")
            assert "accuracy 0." in title
    first = "".join(next(series(root, "v1").iter(f"{SVG}title")).itertext())
    assert (
        first
        == "v1 (primary) \u00b7 2025-11-26 00:00 UTC \u00b7 accuracy 0.900 \u00b7 100 labelled"
    )


def test_primary_is_solid_and_thick_shadows_dashed_with_a_legend() -> None:
    root = parse(render(known_picture()))
    primary = next(series(root, "v1").iter(f"{SVG}polyline"))
    shadow = next(series(root, "v2").iter(f"{SVG}polyline"))
    assert primary.get("stroke") == PRIMARY_COLOUR and primary.get("stroke-dasharray") is None
    assert float(primary.get("stroke-width") or 0) > float(shadow.get("stroke-width") or 0)
    assert shadow.get("stroke-dasharray") and shadow.get("stroke") == colours(known_picture())["v2"]
    labels = texts(svg(root, "accuracy-chart"))
    for expected in ("v1", "primary \u00b7 2571 labelled", "v2", "shadow \u00b7 1476 labelled"):
        assert expected in labels
    assert "accuracy" in labels and "1.00" in labels and "0.00" in labels


def test_hour_labels_show_hours_and_dates() -> None:
    labels = texts(svg(parse(render(known_picture())), "accuracy-chart"))
    assert "00:0026 Nov" in labels and "12:0026 Nov" in labels


def test_a_month_of_hours_is_labelled_on_round_days() -> None:
    points = [Point(T0 + i * HOUR, "v1", 10, 0.8) for i in range(30 * 24)]
    picture = replace(known_picture(), points=points)
    chart = svg(parse(render(picture)), "accuracy-chart")
    labels = [t for t in texts(chart) if re.fullmatch(r"\d\d:\d\d\d\d \w{3}", t)]
    assert 2 <= len(labels) <= PLOT_W // 80
    assert all(label.startswith("00:00") for label in labels)


def test_regression_plots_mae_on_a_round_range() -> None:
    points = [Point(T0 + i * HOUR, "v1", 20, 0.4 + 0.2 * i) for i in range(15)]  # up to 3.2
    picture = replace(known_picture(), task="regression", points=points)
    root = parse(render(picture))
    chart = svg(root, "accuracy-chart")
    labels = texts(chart)
    assert "MAE (lower is better)" in labels
    assert nice_ceiling(3.2 * 1.1) == 5.0
    assert "5" in labels and "0" in labels and "1" in labels
    assert "MAE 3.200" in page_titles(chart)
    assert header(root)["Task"] == "regression"


def test_header_says_what_the_page_covers() -> None:
    picture = replace(known_picture(), roles={"v1": "primary", "v2": "shadow", "v3": "canary"})
    assert header(parse(render(picture))) == {
        "Model": "credit",
        "Task": "classification",
        "Time range": "2025-11-26 00:00 UTC \u2192 2025-11-27 00:00 UTC",
        "Bucket": "hour (3600 s)",
        "Generated at": "2025-11-27 00:02:05 UTC",
        "Current deployment": "primary v1 \u00b7 canary v3 \u00b7 shadow v2",
    }


def test_empty_picture_says_so() -> None:
    root = parse(render(empty_picture()))
    accuracy, drift = svg(root, "accuracy-chart"), svg(root, "drift-chart")
    assert texts(accuracy) == [NO_ACCURACY]
    assert texts(drift) == [NO_DRIFT]
    assert not list(root.iter(f"{SVG}polyline")) and not list(root.iter(f"{SVG}circle"))
    assert header(root)["Time range"] == "no data"
    assert header(root)["Current deployment"] == "none"
    assert not [t for t in root.iter("table")]


def test_buckets_without_labels_only_say_so() -> None:
    points = [Point(T0 + i * HOUR, "v1", 0, None) for i in range(5)]
    root = parse(render(replace(known_picture(), points=points)))
    assert texts(svg(root, "accuracy-chart")) == [NO_ACCURACY]


def test_drift_on_a_small_window_says_why() -> None:
    why = "needs at least 500 rows on each side"
    rows = [feature("age", None, note=why), feature("income", None, note=why)]
    root = parse(render(replace(known_picture(), drift=rows)))
    assert texts(svg(root, "drift-chart")) == [
        "No PSI for any feature: the window is too small.",
        why,
    ]
    body = table_rows(root)[1:]
    assert [r[0] for r in body] == ["age", "income"]
    assert all(r[3:7] == ["\u2014"] * 4 and r[-1] == why for r in body)


def test_a_feature_without_psi_among_others_says_why() -> None:
    rows = [feature("age", 0.05), feature("rare", None, note="needs at least 500 rows")]
    labels = texts(svg(parse(render(replace(known_picture(), drift=rows))), "drift-chart"))
    assert "n/a: needs at least 500 rows" in labels


def test_drift_chart_and_table_carry_the_numbers() -> None:
    root = parse(render(known_picture()))
    chart = svg(root, "drift-chart")
    bars = {r.get("class"): r for r in chart.iter(f"{SVG}rect") if "bar" in (r.get("class") or "")}
    assert set(bars) == {"bar bar-stable", "bar bar-major"}
    assert bars["bar bar-major"].get("fill") == BAND_COLOURS["major"]
    labels = texts(chart)
    assert "0.450 \u25b2 DRIFTED" in labels and "0.020" in labels
    assert {"stable", "moderate", "major", "0.10", "0.20"} <= set(labels)
    rows = table_rows(root)
    assert rows[0] == [
        "feature", "kind", "test", "statistic", "p-value", "PSI", "band", "drifted",
        "rows (reference / live)", "note",
    ]  # fmt: skip
    assert rows[2] == [
        "income", "numeric", "ks", "0.3", "1e-12", "0.450", "major", "yes", "2000 / 1500", "",
    ]  # fmt: skip
    assert rows[1][6:8] == ["stable", "no"]


def test_psi_beyond_the_axis_is_clipped_and_says_its_value() -> None:
    rows = [feature("age", 0.02), feature("wild", 7.0, drifted=True)]
    chart = svg(parse(render(replace(known_picture(), drift=rows))), "drift-chart")
    bar = next(r for r in chart.iter(f"{SVG}rect") if r.get("class") == "bar bar-major")
    assert float(bar.get("width") or 0) == DRIFT_PLOT_W
    assert "\u00bb 7.000 \u25b2 DRIFTED" in texts(chart)


# --- looking at the page ---------------------------------------------------------------


def screenshot(page: str, folder: Path, height: int = 1400) -> Pixels:
    """The page as Chromium draws it, as an RGB array (rows, columns, 3)."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make chromium` (.ci/chromium.sh)"
    folder.mkdir(parents=True, exist_ok=True)
    html = folder / "report.html"
    html.write_text(page, encoding="utf-8")
    png = folder / "report.png"
    command = [
        str(CHROMIUM),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={folder / 'profile'}",
        f"--window-size={WIDTH},{height}",
        f"--screenshot={png}",
        html.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0 and png.exists(), done.stderr[-3000:]
    with Image.open(png) as image:
        assert image.size == (WIDTH, height)
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def near(pixels: Pixels, colour: str, tolerance: int = 40) -> Mask:
    """Pixels within ``tolerance`` (sum over channels) of a ``#rrggbb`` colour."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    result: Mask = np.abs(pixels - rgb).sum(axis=-1) <= tolerance
    return result


def bbox(mask: Mask) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), inclusive."""
    rows, cols = np.nonzero(mask)
    assert len(rows), "colour not found on the page"
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def leading_run(row: Mask) -> int:
    """How many pixels from the start of ``row`` are set, before the first unset one."""
    unset = np.flatnonzero(~row)
    return int(unset[0]) if len(unset) else len(row)


def bands_of_rows(mask: Mask, min_pixels: int, max_gap: int = 3) -> list[tuple[int, int]]:
    """Runs of rows holding at least ``min_pixels`` set pixels, short breaks bridged."""
    rows = np.flatnonzero(mask.sum(axis=1) >= min_pixels)
    runs: list[list[int]] = []
    for r in rows.tolist():
        if runs and r - runs[-1][1] <= max_gap + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    return [(a, b) for a, b in runs]


@pytest.fixture(scope="module")
def known_shot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pixels]:
    yield screenshot(render(known_picture()), tmp_path_factory.mktemp("known"))


def region(mask: Mask, min_pixels: int, min_column: int = 8) -> tuple[int, int, int, int]:
    """The box of rows and columns holding many set pixels: a painted area, not the
    stray anti-aliased pixels of text that happen to have a similar colour."""
    rows = np.flatnonzero(mask.sum(axis=1) >= min_pixels)
    assert len(rows), "area not found on the page"
    cols = np.flatnonzero(mask[rows.min() : rows.max() + 1].sum(axis=0) >= min_column)
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def plot_area(shot: Pixels) -> Pixels:
    top, bottom, left, right = region(near(shot, PLOT_BACKGROUND, 4), PLOT_W // 2)
    assert abs((right - left + 1) - PLOT_W) <= 2 and abs((bottom - top + 1) - PLOT_H) <= 3
    return shot[top : bottom + 1, left : right + 1]


def test_screenshot_shows_the_primary_falling_below_its_shadow(known_shot: Pixels) -> None:
    plot = plot_area(known_shot)
    height, width = plot.shape[:2]
    primary = np.nonzero(near(plot, PRIMARY_COLOUR))
    shadow = np.nonzero(near(plot, colours(known_picture())["v2"]))
    half = width / 2

    def median_y(found: tuple[npt.NDArray[np.intp], ...], right: bool) -> float:
        ys, xs = found
        chosen = ys[(xs >= half) if right else (xs < half)]
        assert len(chosen) > 200, "line hardly visible"
        return float(np.median(chosen))

    left_y, right_y = median_y(primary, False), median_y(primary, True)
    assert right_y > left_y + 50, "the primary's fall is not visible"
    assert abs(left_y - 0.1 * height) <= 5 and abs(right_y - 0.4 * height) <= 5
    shadow_right = median_y(shadow, True)
    assert shadow_right < right_y - 50, "the shadow is not above the primary"
    assert abs(shadow_right - 0.05 * height) <= 5


def test_screenshot_shows_the_unlabelled_bucket_as_a_gap(known_shot: Pixels) -> None:
    plot = plot_area(known_shot)
    height, width = plot.shape[:2]
    primary = near(plot, PRIMARY_COLOUR)
    x = round(POINT_PAD + GAP / (BUCKETS - 1) * (width - 2 * POINT_PAD))
    assert not primary[:, x - 4 : x + 5].any(), "a line or point where the bucket has no labels"
    assert near(plot, colours(known_picture())["v2"])[:, x - 4 : x + 5].any()
    assert not primary[int(height * 0.8) :].any(), "the gap was drawn as a fall to zero"


def test_screenshot_shows_the_drifted_feature_as_a_long_major_bar(known_shot: Pixels) -> None:
    backgrounds = np.zeros(known_shot.shape[:2], dtype=np.bool_)
    for colour in BAND_BACKGROUNDS.values():
        backgrounds |= near(known_shot, colour, 6)
    top, _, left, _ = region(backgrounds, DRIFT_PLOT_W // 2)
    top_psi = 0.5  # the axis for a largest PSI of 0.45
    lengths = {}
    for i, row in enumerate(known_picture().drift):
        assert row.psi is not None and row.band is not None
        y = top + i * DRIFT_ROW_H + DRIFT_ROW_H // 2
        line = known_shot[y, left : left + DRIFT_PLOT_W + 1]
        lengths[row.feature] = leading_run(near(line, BAND_COLOURS[row.band], 6))
        assert abs(lengths[row.feature] - row.psi / top_psi * DRIFT_PLOT_W) <= 3
        other = "stable" if row.band == "major" else "major"
        assert not near(line, BAND_COLOURS[other], 30).any()
        beyond = known_shot[y - 8 : y + 8, left + lengths[row.feature] + 2 :]
        marked = int(near(beyond, DRIFTED_MARK, 60).sum())
        assert (marked > 10) == row.drifted, (row.feature, marked)
    assert lengths["income"] > 3 * max(lengths["age"], lengths["tenure"])


def test_screenshot_of_an_empty_report_shows_messages(tmp_path: Path) -> None:
    shot = screenshot(render(empty_picture()), tmp_path, height=1000)
    blank = near(shot, EMPTY_BACKGROUND, 4)
    regions = bands_of_rows(blank, min_pixels=600)
    assert len(regions) == 2, regions
    heights = [b - a + 1 for a, b in regions]
    assert abs(heights[0] - (CHART_H - 2)) <= 3 and abs(heights[1] - 158) <= 3
    for a, b in regions:
        _, _, left, right = bbox(blank[a : b + 1])
        area = shot[a : b + 1, left : right + 1]
        assert blank[a : b + 1, left : right + 1].mean() > 0.95, "chart area is not blank"
        ink = area.sum(axis=-1) < 3 * 160
        assert ink.sum() > 100, "no message in the chart area"
        ys = np.nonzero(ink)[0]
        assert abs(np.median(ys) - (b - a) / 2) < 30, "the message is not in the middle"
    for colour in (PRIMARY_COLOUR, *BAND_COLOURS.values()):
        assert not near(shot, colour, 30).any(), colour
