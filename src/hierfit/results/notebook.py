"""Jupyter display of results: ``_repr_html_`` fragments (spec, key tables, warnings).

Plain HTML with the tables pandas renders (its text is escaped), no scripts or styles beyond
a few inline rules, so a notebook shows the same thing with and without trust.
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import pandas as pd

__all__ = ["block", "fragment", "table"]


def table(frame: pd.DataFrame, max_rows: int = 30) -> str:
    """A compact table (numbers to 4 significant digits; longer tables cut, saying so)."""
    return frame.to_html(index=False, max_rows=max_rows, float_format=lambda v: f"{v:.4g}", border=0)


def block(title: str, inner: str, open_: bool = True) -> str:
    """A collapsible block with a title."""
    return f"<details{' open' if open_ else ''}><summary><b>{html.escape(title)}</b></summary>{inner}</details>"


def fragment(heading: str, facts: Iterable[str], blocks: Iterable[str], warnings: Iterable[str]) -> str:
    """The whole display: heading, one line of facts, the blocks, then warnings (if any)."""
    warn = list(warnings)
    notes = ("<ul style='color:#9a3412'>" + "".join(f"<li>{html.escape(w)}</li>" for w in warn) + "</ul>") if warn else ""
    return (f"<div class='hierfit'><h4 style='margin:0.2em 0'>{html.escape(heading)}</h4>"
            f"<p style='margin:0.2em 0'>{' · '.join(html.escape(f) for f in facts)}</p>{''.join(blocks)}{notes}</div>")
