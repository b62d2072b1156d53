"""``report.html``: a report's Markdown as one self-contained page (plots embedded, inline CSS, no network).

Both reports (``recsys evaluate`` and ``recsys monitor``) write ``report.md`` first; :func:`write_html` renders that
same text (markdown-it-py, CommonMark with tables, raw HTML escaped), so the page holds exactly the Markdown's
content. Every table gets the id of its section (:func:`slug` of the heading above it), so a reader, a test or a
link can find it, and every image becomes ``<img src="data:image/png;base64,..." data-file="NAME.png">`` read from
beside ``report.md``. The page names no URL: it opens from a mail attachment or an offline disk the same.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from markdown_it import MarkdownIt
from markdown_it.token import Token

from recsys.errors import RecsysError
from recsys.io import atomic_path

REPORT_HTML = "report.html"
_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 72rem; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ccc; padding: .25rem .6rem; } th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0 1.5rem; }
code { background: #f3f3f3; padding: 0 .2rem; }
"""


def slug(heading: str) -> str:
    """The id of a section: its heading lower-cased, runs of other characters than letters and digits as one ``-``.

    >>> slug("Feature importance (top 20 by gain)")
    'feature-importance-top-20-by-gain'
    """
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-") or "section"


def _embed(token: Token, image_dir: Path, source: Path) -> None:
    name = str(token.attrs.get("src", ""))
    path = image_dir / name
    if "/" in name or ":" in name or not path.is_file():
        raise RecsysError(f"{source}: the plot {name!r} it shows is not a file beside it; re-run the report")
    token.attrs["src"] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    token.attrs["data-file"] = name


def markdown_to_html(markdown: str, image_dir: Path, title: str, source: Path | str = "report.md") -> str:
    """A self-contained HTML page of `markdown` (see the module docstring).

    Args:
        markdown: the report's Markdown.
        image_dir: where the images it names are.
        title: the page title.
        source: what errors name (the Markdown file).

    Raises:
        RecsysError: an image the Markdown shows is not a file in `image_dir`.
    """
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    section, used = "report", set()
    for i, token in enumerate(tokens):
        if token.type == "heading_open":
            section = slug(tokens[i + 1].content)
        elif token.type == "table_open":
            table_id, n = section, 2
            while table_id in used:
                table_id, n = f"{section}-{n}", n + 1
            used.add(table_id)
            token.attrs["id"] = table_id
        for child in token.children or []:
            if child.type == "image":
                _embed(child, image_dir, Path(source))
    body = md.renderer.render(tokens, md.options, {})
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def write_html(markdown_path: str | Path, out: str | Path | None = None) -> Path:
    """Render ``report.md`` at `markdown_path` into `out` (default ``report.html`` beside it), atomically.

    Returns:
        The path written.
    """
    markdown_path = Path(markdown_path)
    out = Path(out) if out is not None else markdown_path.with_name(REPORT_HTML)
    text = markdown_path.read_text()
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "report")
    page = markdown_to_html(text, markdown_path.parent, title, markdown_path)
    with atomic_path(out) as tmp:
        tmp.write_text(page)
    return out
