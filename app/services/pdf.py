"""HTML → PDF with xhtml2pdf: pure Python (ReportLab underneath), so `pip install` alone is enough anywhere.

WeasyPrint renders CSS better but needs Pango and its fonts from the system, which a pip-only deploy (Replit,
a bare container) does not have. The documents here are simple tables; xhtml2pdf renders them well.
"""
from __future__ import annotations

import io


class PdfError(Exception):
    """The renderer could not turn the HTML into a PDF."""


def html_to_pdf(html: str) -> bytes:
    """Render a self-contained HTML document (styles inline, no external resources) to PDF bytes."""
    # Imported here: ReportLab is heavy, and only the web process ever renders a PDF.
    from xhtml2pdf import pisa
    from xhtml2pdf.config.resources import ResourceAccessPolicy

    # The document is ours and self-contained: nothing is fetched, neither from the network nor from the disk.
    policy = ResourceAccessPolicy.server(None, allow_remote=False)
    out = io.BytesIO()
    result = pisa.CreatePDF(html, dest=out, encoding="utf-8", resource_policy=policy, raise_exception=False)
    if result.err:
        raise PdfError(f"PDF rendering failed with {result.err} error(s)")
    return out.getvalue()
