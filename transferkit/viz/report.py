"""A run report as one self-contained HTML file: sections of tables, pictures and galleries.

Everything the page shows is inside the file: pictures as ``data:`` URIs (PNG, JPEG or SVG), the styles
in one ``<style>``; no script, no font or stylesheet from the network (a Content-Security-Policy in the
page refuses any), so it opens offline, from an e-mail attachment or an artifact store alike. The layout
reads on a laptop (about 1280 px) and on a phone (about 390 px): pictures shrink to the page width and
wide tables scroll sideways inside their own box.

This module only renders: it takes plain data (`Report`, made of `Section`\\ s holding `Table`,
`Picture`, `Gallery` and `Note` blocks) and knows nothing of models or training. Every string from the
data is HTML-escaped. A gallery is a titled list of ``(image, caption)`` items, so any task's
interpretation plugs in as one.

Examples:
    >>> report = Report(
    ...     "shapes run",
    ...     [Section("Final metrics", [Table("", ["metric", "value"], [["val_acc", 0.9]])])],
    ... )
    >>> "<h2 id=\\"final-metrics\\">Final metrics</h2>" in render_report(report)
    True
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..atomic import write_text

__all__ = [
    "Block",
    "Gallery",
    "GalleryItem",
    "ImageSource",
    "Note",
    "Picture",
    "Report",
    "Section",
    "Table",
    "reliability_svg",
    "render_report",
    "thumbnail",
    "write_report",
]

ImageSource = bytes | str | os.PathLike | Image.Image | np.ndarray
"""A picture: encoded bytes (PNG, JPEG or SVG), a file, a PIL image or an ``[H, W(, 3)]`` uint8 array."""


@dataclass(frozen=True)
class Note:
    """A paragraph of text."""

    text: str


@dataclass(frozen=True)
class Table:
    """A table; numbers are shown with 4 decimals (whole numbers as they are).

    Attributes:
        title: A heading above it ("" for none).
        columns: The header cells.
        rows: One sequence of cells per row.
        note: A line under it ("" for none).
    """

    title: str
    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    note: str = ""


@dataclass(frozen=True)
class Picture:
    """One picture (a plot, a confusion matrix) at its own width, never wider than the page."""

    title: str
    image: ImageSource
    caption: str = ""


@dataclass(frozen=True)
class GalleryItem:
    """One thumbnail of a gallery; each line of ``caption`` is shown on a line of its own."""

    image: ImageSource | None
    caption: str


@dataclass(frozen=True)
class Gallery:
    """A titled grid of `GalleryItem`\\ s (top losses, a task's worst predictions)."""

    title: str
    items: Sequence[GalleryItem]
    note: str = ""


Block = Note | Table | Picture | Gallery
"""What a `Section` holds: paragraphs, tables, pictures and galleries, shown in order."""


@dataclass(frozen=True)
class Section:
    """A titled part of the report; ``anchor`` (default: from the title) is its ``id`` in the page."""

    title: str
    blocks: Sequence[Block]
    anchor: str = ""


@dataclass(frozen=True)
class Report:
    """The whole report: a title, a line under it, and its sections in order."""

    title: str
    sections: Sequence[Section]
    subtitle: str = ""
    generator: str = "transferkit"


_STYLE = """
:root { color-scheme: light; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--fg); background: #fff; }
main { max-width: 1100px; margin: 0 auto; padding: 16px; }
header { border-bottom: 1px solid var(--line); margin-bottom: 8px; }
h1 { font-size: 1.6em; margin: 8px 0 4px; overflow-wrap: anywhere; }
h2 { font-size: 1.25em; margin: 28px 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
p, .muted { overflow-wrap: anywhere; } .muted { color: var(--muted); }
nav ul { display: flex; flex-wrap: wrap; gap: 4px 14px; list-style: none; padding: 0; margin: 8px 0; }
nav a { color: #0969da; text-decoration: none; }
div.table { display: inline-block; vertical-align: top; max-width: 100%; margin-right: 32px; }
.scroll { overflow-x: auto; max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: var(--bg); font-weight: 600; }
td.num { text-align: right; }
tr:last-child td { border-bottom: 0; }
figure { margin: 8px 0 16px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line);
  border-radius: 6px; background: #fff; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(140px, 1fr)); gap: 12px;
  margin: 8px 0 16px; padding: 0; list-style: none; }
.gallery li { border: 1px solid var(--line); border-radius: 6px; padding: 6px; background: var(--bg);
  font-size: 0.85em; line-height: 1.35; overflow-wrap: anywhere; }
.gallery img { display: block; width: 100%; height: auto; border-radius: 4px; margin-bottom: 4px; }
footer { color: var(--muted); font-size: 0.85em; margin: 32px 0 8px; border-top: 1px solid var(--line); }
@media (max-width: 600px) {
  main { padding: 10px; } body { font-size: 14px; } div.table { display: block; margin-right: 0; }
  .gallery { grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px; }
}
"""

# no script, nothing from the network: only pictures from data: URIs and the inline style
_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or "section"


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _encoded(image: ImageSource) -> bytes:
    """``image`` as encoded bytes: files and bytes as they are, arrays and PIL images as PNG."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        return _png_bytes(image)
    raise TypeError(f"a report picture is bytes, a file, a PIL image or an array, not {type(image).__name__}")


def _data_uri(image: ImageSource) -> str:
    data = _encoded(image)
    if data.startswith(b"\x89PNG"):
        mime = "image/png"
    elif data.startswith(b"\xff\xd8"):
        mime = "image/jpeg"
    elif data[:256].lstrip().startswith((b"<svg", b"<?xml")):
        mime = "image/svg+xml"
    else:  # another format PIL reads (a .bmp, a .webp): converted so every browser shows it
        with Image.open(io.BytesIO(data)) as opened:
            data, mime = _png_bytes(opened.convert("RGB")), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.4f}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{_esc(value)}</td>"


def _table(block: Table) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in block.columns)
    rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in block.rows)
    parts = [f"<h3>{_esc(block.title)}</h3>"] if block.title else []
    parts.append(
        f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
    )
    if block.note:
        parts.append(f'<p class="muted">{_esc(block.note)}</p>')
    return '<div class="table">' + "\n".join(parts) + "</div>"  # side by side where the page is wide


def _picture(block: Picture) -> str:
    caption = f"<figcaption>{_esc(block.caption)}</figcaption>" if block.caption else ""
    title = f"<h3>{_esc(block.title)}</h3>" if block.title else ""
    alt = _esc(block.title or block.caption)
    return f'{title}<figure><img src="{_data_uri(block.image)}" alt="{alt}">{caption}</figure>'


def _gallery(block: Gallery) -> str:
    items = []
    for item in block.items:
        lines = "<br>".join(_esc(line) for line in item.caption.splitlines())
        alt = _esc(item.caption.splitlines()[0] if item.caption else block.title)
        picture = "" if item.image is None else f'<img src="{_data_uri(item.image)}" alt="{alt}">'
        items.append(f"<li>{picture}{lines}</li>")
    parts = [f"<h3>{_esc(block.title)}</h3>"] if block.title else []
    if block.note:
        parts.append(f'<p class="muted">{_esc(block.note)}</p>')
    parts.append(f'<ul class="gallery">{"".join(items)}</ul>' if items else '<p class="muted">(none)</p>')
    return "\n".join(parts)


def _block(block: Block) -> str:
    if isinstance(block, Note):
        return f"<p>{_esc(block.text)}</p>"
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Picture):
        return _picture(block)
    if isinstance(block, Gallery):
        return _gallery(block)
    raise TypeError(
        f"a report section holds Note, Table, Picture and Gallery blocks, not {type(block).__name__}"
    )


def render_report(report: Report) -> str:
    """The report as one HTML page (a string), with a table of contents linking each section.

    Raises:
        TypeError: A block or picture of a type the report does not draw.

    Examples:
        >>> page = render_report(Report("<b>run</b>", [Section("Notes", [Note("a < b")])]))
        >>> "&lt;b&gt;run&lt;/b&gt;" in page, "a &lt; b" in page, "<script" in page
        (True, True, False)
    """
    anchors = [section.anchor or _slug(section.title) for section in report.sections]
    toc = "".join(
        f'<li><a href="#{_esc(a)}">{_esc(s.title)}</a></li>'
        for a, s in zip(anchors, report.sections, strict=True)
    )
    body = []
    for anchor, section in zip(anchors, report.sections, strict=True):
        blocks = "\n".join(_block(block) for block in section.blocks)
        heading = f'<h2 id="{_esc(anchor)}">{_esc(section.title)}</h2>'
        body.append(f'<section class="{_esc(anchor)}">\n{heading}\n{blocks}\n</section>')
    subtitle = f'<p class="muted">{_esc(report.subtitle)}</p>' if report.subtitle else ""
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f'<meta http-equiv="Content-Security-Policy" content="{_POLICY}">',
            f'<meta name="generator" content="{_esc(report.generator)}">',
            f"<title>{_esc(report.title)}</title>",
            f"<style>{_STYLE}</style>",
            "</head>",
            "<body><main>",
            f"<header><h1>{_esc(report.title)}</h1>{subtitle}<nav><ul>{toc}</ul></nav></header>",
            *body,
            f"<footer>Written by {_esc(report.generator)}; self-contained: no network, no script.</footer>",
            "</main></body>",
            "</html>",
            "",
        ]
    )


def write_report(report: Report, path: str | os.PathLike[str]) -> Path:
    """Render ``report`` and write it to ``path`` atomically (whole or not at all, never through a link).

    Returns:
        The path written.

    Raises:
        FileExistsError: ``path`` is a symbolic link.

    Examples:
        >>> write_report(Report("run", []), "runs/shapes/report.html")  # doctest: +SKIP
        PosixPath('runs/shapes/report.html')
    """
    path = Path(path)
    page = render_report(report)  # rendered first: a bad block leaves the old file in place
    write_text(path, page)
    return path


def thumbnail(image: ImageSource, size: int = 128) -> bytes:
    """A PNG of ``image`` with its longer side at most ``size`` pixels (never enlarged), in RGB.

    Examples:
        >>> png = thumbnail(np.zeros((300, 150, 3), dtype=np.uint8), size=64)
        >>> Image.open(io.BytesIO(png)).size
        (32, 64)
    """
    if size < 1:
        raise ValueError(f"thumbnail(size={size}): size must be >= 1")
    if isinstance(image, Image.Image):
        picture = image.convert("RGB")
    elif isinstance(image, np.ndarray):
        picture = Image.fromarray(image).convert("RGB")
    else:
        with Image.open(io.BytesIO(_encoded(image))) as opened:
            picture = opened.convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    return _png_bytes(picture)


def reliability_svg(bins: Sequence[tuple[float, float, float, float, int]], ece: float) -> bytes:
    """A reliability diagram as SVG: per confidence bin, the accuracy (bar) against the diagonal.

    Args:
        bins: ``(lower, upper, mean confidence, accuracy, count)`` per bin, in order; empty bins draw no bar.
        ece: The expected calibration error, shown in the title.

    Examples:
        >>> svg = reliability_svg([(0.0, 0.5, 0.4, 0.5, 3), (0.5, 1.0, 0.8, 0.6, 5)], ece=0.1)
        >>> svg.startswith(b"<svg"), b"ECE 0.100" in svg
        (True, True)
    """
    width, height, left, bottom, top, right = 360, 300, 44, 36, 28, 12
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(v: float) -> float:
        return left + v * plot_w

    def y(v: float) -> float:
        return top + (1 - v) * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">'
        f"Reliability (ECE {ece:.3f})</text>",
    ]
    for lower, upper, _, accuracy, count in bins:
        if count > 0:
            parts.append(
                f'<rect x="{x(lower):.1f}" y="{y(accuracy):.1f}" width="{x(upper) - x(lower):.1f}" '
                f'height="{y(0) - y(accuracy):.1f}" fill="#4c8bf5" stroke="#fff"/>'
            )
    parts.append(
        f'<line x1="{x(0)}" y1="{y(0)}" x2="{x(1)}" y2="{y(1)}" stroke="#888" stroke-dasharray="4 3"/>'
    )
    parts.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>')
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f'<text x="{x(tick):.1f}" y="{y(0) + 14:.1f}" text-anchor="middle">{tick:g}</text>')
        parts.append(f'<text x="{left - 5}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick:g}</text>')
    parts += [
        f'<text x="{x(0.5):.1f}" y="{height - 4}" text-anchor="middle">confidence (top-1)</text>',
        f'<text x="12" y="{y(0.5):.1f}" text-anchor="middle" transform="rotate(-90 12 {y(0.5):.1f})">'
        "accuracy</text></svg>",
    ]
    return "\n".join(parts).encode()
