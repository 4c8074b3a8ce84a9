"""One self-contained HTML page: text, tables and PNG images embedded as ``data:`` URIs.

Nothing on the page refers to another file or to the network (no scripts, no
style sheets, no fonts, no images outside the page): it opens the same from a
mail attachment, a laptop without the run's folder, or a browser offline.
Images are shown at their natural size (``plots.DPI`` pixels per inch of figure).
"""

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Section", "image_html", "page_html", "table_html"]

_STYLE = """
body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1340px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td.text, th.text { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; } figcaption { font-size: 0.85em; color: #555; max-width: 640px; }
pre { background: #f6f6f6; padding: 8px; white-space: pre-wrap; }
pre.command span { white-space: nowrap; }
.note { color: #8a5a00; }
"""


@dataclass(frozen=True)
class Section:
    """A heading and the HTML below it (already escaped where it holds text)."""

    title: str
    body: str


def image_html(png: bytes, *, alt: str, caption: str = "") -> str:
    """An ``<img>`` holding ``png`` as a base64 ``data:`` URI, in a ``<figure>``."""
    data = base64.b64encode(png).decode("ascii")
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img class="plot" alt="{html.escape(alt, quote=True)}" '
        f'src="data:image/png;base64,{data}">{text}</figure>'
    )


def table_html(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, text_columns: int = 0
) -> str:
    """A table of already formatted cells; the first ``text_columns`` columns align left.

    An all-empty ``header`` writes no header row.
    """

    def cell(tag: str, index: int, value: str) -> str:
        align = ' class="text"' if index < text_columns else ""
        return f"<{tag}{align}>{html.escape(value)}</{tag}>"

    head = "".join(cell("th", i, name) for i, name in enumerate(header))
    head = f"<thead><tr>{head}</tr></thead>" if any(header) else ""
    body = "".join(
        "<tr>" + "".join(cell("td", i, value) for i, value in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table>{head}<tbody>{body}</tbody></table>"


def page_html(title: str, intro: str, sections: Sequence[Section]) -> str:
    """The whole page: ``title`` (text), ``intro`` and ``sections`` (HTML)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        intro,
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        parts.append(section.body)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
