"""HTML pages: one self-contained file (images embedded as base64 PNG), from ``(heading, html)`` sections."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..files import json_text
from .tables import cell


def esc(text: str) -> str:
    """``text`` escaped for HTML."""
    return html.escape(str(text))


def html_page(title: str, sections: list[tuple[str, str]], meta: dict | None = None) -> str:
    """A self-contained page from ``(heading, html)`` sections, with a provenance block at the end."""
    style = (
        "body{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 7px;text-align:right}"
        "img{max-width:100%;image-rendering:pixelated}pre{background:#f4f4f4;padding:1em;overflow-x:auto}"
    )
    body = "".join(f"<h2>{esc(h)}</h2>{content}" for h, content in sections)
    if meta:
        body += "<h2>Provenance</h2><pre>" + esc(json_text(meta)) + "</pre>"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{style}</style></head><body><h1>{esc(title)}</h1>{body}</body></html>\n"
    )


def html_table(rows: list[dict], columns: list[str], units: dict[str, str] | None = None) -> str:
    """An HTML table; ``units`` puts each column's unit under its name."""
    head = "".join(
        f"<th>{esc(c)}{'<br><small>' + esc(units[c]) + '</small>' if units and units.get(c) else ''}</th>"
        for c in columns
    )
    body = "".join("<tr>" + "".join(f"<td>{esc(cell(r.get(c)))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"


def html_pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def html_image(path: str | Path, alt: str = "") -> str:
    """A PNG file embedded as an ``<img>``."""
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}'>"
