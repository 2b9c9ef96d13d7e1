"""Assemble one self-contained HTML page: text, tables and plots as embedded PNG images.

The page needs nothing but itself: CSS is inline, images are ``data:image/png;base64`` URIs,
and there is no script, so it opens the same from a mail attachment as from a web server.
Figures too wide for a page (LightGBM trees) are inline SVG at natural size in a box that
scrolls: their text stays real text, legible at 100% zoom and found by the browser's search.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0; color: #1f2328; background: #fafafa; }
header { background: #0b3d63; color: white; padding: 18px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 0; opacity: 0.85; font-size: 13px; }
nav { padding: 8px 32px; background: #eef2f5; font-size: 13px; position: sticky; top: 0; border-bottom: 1px solid #d0d7de; }
nav a { margin-right: 14px; color: #0b3d63; text-decoration: none; }
main { padding: 8px 32px 40px 32px; max-width: 1500px; }
section { background: white; border: 1px solid #d0d7de; border-radius: 6px; padding: 10px 20px 16px 20px; margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #eaeef2; padding-bottom: 4px; }
h3 { font-size: 15px; margin-bottom: 6px; }
table.data { border-collapse: collapse; font-size: 12px; margin: 6px 0 12px 0; }
table.data th, table.data td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
table.data th { background: #f3f5f7; }
table.data td:first-child, table.data th:first-child { text-align: left; }
table.kv td { text-align: left; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eaeef2; margin: 6px 0; display: block; }
div.svg-plot { overflow: auto; max-height: 85vh; border: 1px solid #eaeef2; margin: 6px 0; background: white; }
div.svg-plot svg { display: block; max-width: none; }
pre { background: #f6f8fa; padding: 8px 12px; font-size: 12px; overflow-x: auto; }
.warn { background: #fff8c5; border-left: 4px solid #d4a72c; padding: 6px 10px; margin: 6px 0; font-size: 13px; }
.ok { background: #dafbe1; border-left: 4px solid #2da44e; padding: 6px 10px; margin: 6px 0; font-size: 13px; }
.note { color: #57606a; font-size: 13px; }
details summary { cursor: pointer; color: #0b3d63; margin: 6px 0; }
"""


def figure_to_data_uri(fig, dpi: int = 90) -> str:
    """PNG bytes of a figure as a ``data:`` URI; the figure is closed afterwards."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_to_svg(fig, prefix: str) -> str:
    """A figure as an inline ``<svg>`` element at natural size (1 pt = 1.33 px), text as text.

    Every id in it is prefixed with ``prefix`` (and so is every reference to one), so several
    figures on one page never share an id: matplotlib names groups ``patch_1``, ``text_1``...
    in every file. The figure is closed afterwards.
    """
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):  # <text> the browser draws, not glyph outlines
        fig.savefig(buf, format="svg", facecolor="white", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML declaration and DOCTYPE (not allowed inline)
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)  # RDF naming outside schemas
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    return re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}-{m.group(1)}"', svg)


def svg_figure(fig, alt: str, prefix: str) -> str:
    """A figure as inline SVG at natural size in a scrolling box (see :func:`figure_to_svg`)."""
    return f'<div class="svg-plot" data-what="{html.escape(alt)}">{figure_to_svg(fig, prefix)}</div>'


def table_html(frame: pd.DataFrame, digits: int = 4, max_rows: int | None = None, classes: str = "data") -> str:
    """A DataFrame as an escaped HTML table (numbers to ``digits`` significant figures)."""
    note = ""
    if max_rows is not None and len(frame) > max_rows:
        note = f'<p class="note">First {max_rows} of {len(frame)} rows.</p>'
        frame = frame.head(max_rows)
    out = frame.to_html(index=False, classes=classes, border=0, na_rep="NA", float_format=lambda v: f"{v:.{digits}g}", escape=True)
    return out + note


@dataclass
class Page:
    """Sections of a report, rendered with :meth:`render`."""

    title: str
    subtitle: str = ""
    sections: list[tuple[str, str, list[str]]] = field(default_factory=list)

    def section(self, title: str) -> list[str]:
        """Start a section; append HTML fragments to the returned list."""
        parts: list[str] = []
        anchor = "s" + str(len(self.sections) + 1)
        self.sections.append((anchor, title, parts))
        return parts

    def render(self) -> str:
        from hierfit._version import __version__

        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        nav = "".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in self.sections)
        body = "".join(f'<section id="{a}"><h2>{html.escape(t)}</h2>{"".join(parts)}</section>' for a, t, parts in self.sections)
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'  # no favicon request (keeps the console clean)
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(self.subtitle)} · hierfit {__version__} · {stamp}</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n"
        )


def img(fig, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="{figure_to_data_uri(fig)}">'


def text(s: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return f"<p{c}>{html.escape(s)}</p>"


def pre(s: str) -> str:
    return f"<pre>{html.escape(s)}</pre>"


def h3(s: str) -> str:
    return f"<h3>{html.escape(s)}</h3>"


def details(summary: str, inner: str) -> str:
    return f"<details><summary>{html.escape(summary)}</summary>{inner}</details>"


def failed_plot(what: str, exc: Exception) -> str:
    """A visible note in place of a plot that could not be drawn (the report still renders)."""
    return f'<div class="warn">{html.escape(what)} could not be drawn: {html.escape(type(exc).__name__)}: {html.escape(str(exc))}</div>'


def data_summary(data: pd.DataFrame, response: str, hierarchy) -> str:
    """Rows, columns, the response's distribution, and group sizes per level."""
    parts = [text(f"{len(data)} rows, {data.shape[1]} columns: {', '.join(map(str, data.columns))}.")]
    if response in data.columns:
        d = data[response].describe()
        parts.append(h3(f"response {response!r}"))
        parts.append(table_html(pd.DataFrame([d.to_dict()])))
    numeric = data.select_dtypes("number").drop(columns=[response], errors="ignore")
    if numeric.shape[1]:
        parts.append(h3("numeric predictors"))
        desc = numeric.describe().T.reset_index().rename(columns={"index": "column"})
        parts.append(table_html(desc))
    parts.append(h3("hierarchy"))
    parts.append(pre(hierarchy.describe()))
    rows = []
    for lv in hierarchy.levels:
        s = np.asarray(lv.sizes)
        rows.append({"level": lv.name, "parent": lv.parent or hierarchy.national, "groups": lv.n_groups, "rows min": int(s.min()), "rows median": float(np.median(s)), "rows max": int(s.max())})
    parts.append(table_html(pd.DataFrame(rows)))
    return "".join(parts)
