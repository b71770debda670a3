"""The page of an executed notebook: its outputs only, cleaned so that nothing runs.

An output may hold HTML (a DataFrame, a styled table) and a markdown cell may hold raw HTML:
both go through an allow-list (structure, text, links, embedded images; no script, no event
handler, nothing from the network), and the page carries a Content-Security-Policy that
forbids scripts anyway.
"""

from __future__ import annotations

import copy
import re
from urllib.parse import urlsplit

HIDDEN_TAGS = ("parameters", "injected-parameters")
_SCRIPT = re.compile(r"<script\b[^>]*>.*?</script>", re.DOTALL | re.IGNORECASE)
_STYLE = re.compile(r"<style\b[^>]*>.*?</style>", re.DOTALL | re.IGNORECASE)
_HEAD = re.compile(r"<head>\s*(<meta charset=[^>]*>)?", re.IGNORECASE)


# What an HTML output (a DataFrame, a styled table) may keep in a report: structure and
# text, no script, no event handler, no remote resource.
_SAFE_TAGS = frozenset(
    {
        "table",
        "thead",
        "tbody",
        "tfoot",
        "tr",
        "th",
        "td",
        "caption",
        "colgroup",
        "col",
        "div",
        "span",
        "p",
        "br",
        "hr",
        "b",
        "i",
        "em",
        "strong",
        "code",
        "pre",
        "small",
        "sub",
        "sup",
        "ul",
        "ol",
        "li",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "blockquote",
    }
)
_SAFE_ATTRIBUTES = {
    "*": ["class", "title"],
    "th": ["colspan", "rowspan"],
    "td": ["colspan", "rowspan"],
}


def sanitize_outputs(nb):
    """A copy of ``nb`` whose outputs are safe to show: no stderr, no JavaScript, clean HTML.

    Markdown, in cells and in outputs, is cleaned when it is rendered (:func:`to_html`).
    """
    import bleach

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream" and output.name == "stderr":
                continue
            data = output.get("data", {})
            for kind in [k for k in data if "javascript" in k or k.endswith("+json")]:
                del data[kind]
            if "text/html" in data:
                html = data["text/html"]
                html = _STYLE.sub("", "".join(html) if isinstance(html, list) else html)
                data["text/html"] = bleach.clean(
                    html, tags=_SAFE_TAGS, attributes=_SAFE_ATTRIBUTES, strip=True
                )
            kept.append(output)
        cell.outputs = kept
    return nb


# Rendered markdown keeps, beyond what outputs keep: links to the web, to other pages and
# within the page, images embedded as data: URIs (the only images the CSP lets a page load),
# heading anchors and table alignment. Never an event handler or a script URL.
_MARKDOWN_TAGS = _SAFE_TAGS | {"a", "img", "del", "s", "dl", "dt", "dd", "kbd"}
_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_LINK_SCHEMES = frozenset({"", "http", "https", "mailto"})
_IMAGE_WITHOUT_SOURCE = re.compile(r"<img\b(?![^>]*\ssrc=)[^>]*>")


def _markdown_attribute(tag: str, name: str, value: str) -> bool:
    """Whether rendered markdown may keep the attribute ``name="value"`` on ``tag``."""
    if name in ("class", "title"):
        return True
    if tag in ("th", "td"):
        return name in ("colspan", "rowspan", "style")  # style: text-align only (below)
    if tag in _HEADINGS:
        return name == "id"
    if tag == "a" and name == "href":
        return urlsplit(value.strip()).scheme.lower() in _LINK_SCHEMES
    if tag == "img":
        return name in ("alt", "width", "height") or (
            name == "src" and value.startswith("data:image/")
        )
    return False


def sanitize_markdown_html(html: str) -> str:
    """Rendered markdown with only the structure, text, links and embedded images of markdown.

    A markdown cell may hold raw HTML; it is the notebook's text, but a notebook (or the
    data its outputs print as markdown) is no reason to run code in a reader's browser.
    """
    import bleach
    from bleach.css_sanitizer import CSSSanitizer

    clean = bleach.clean(
        html,
        tags=_MARKDOWN_TAGS,
        attributes=_markdown_attribute,
        protocols=["http", "https", "mailto", "data"],  # data: only on img (above)
        css_sanitizer=CSSSanitizer(allowed_css_properties=["text-align"]),
        strip=True,
    )
    return _IMAGE_WITHOUT_SOURCE.sub("", clean)  # an image from elsewhere would show broken


# The same policy as the report pages (templates/_base.html): no script, nothing from the
# network; inline styles and data: images only.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def to_html(nb) -> str:
    """The report page: outputs only, no parameters, no stderr, nothing loaded from a CDN."""
    from jinja2 import pass_context
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor

    exporter = HTMLExporter(
        template_name="lab",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
        embed_images=True,
        mathjax_url="",
        require_js_url="",
        jquery_url="",
        mermaid_js_url="",
        widget_renderer_url="",
    )
    remove = TagRemovePreprocessor(remove_cell_tags=set(HIDDEN_TAGS), enabled=True)
    exporter.register_preprocessor(remove, enabled=True)
    render_markdown = exporter.markdown2html

    @pass_context
    def markdown2html(context, source):
        return sanitize_markdown_html(render_markdown(context, source))

    exporter.register_filter("markdown2html", markdown2html)
    body, _ = exporter.from_notebook_node(sanitize_outputs(nb))
    # The page needs no script: tables and static images only. The template's own
    # (require.js, MathJax, mermaid from a CDN) go; outputs were sanitized above. The CSP
    # forbids scripts anyway, should anything slip through.
    policy = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
    return _HEAD.sub(lambda head: f"{head.group()}\n{policy}", _SCRIPT.sub("", body), count=1)
