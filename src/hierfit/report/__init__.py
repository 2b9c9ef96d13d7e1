"""Self-contained HTML reports of a fit or a comparison (images embedded as PNG data URIs)."""

from hierfit.report.build import build_report

__all__ = ["build_report"]
