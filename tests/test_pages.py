"""The page of an executed notebook: what a notebook's outputs and markdown may keep."""

from demo_stage import make_project

from churnlab.pipeline.execute import run_stage
from churnlab.pipeline.pages import CONTENT_SECURITY_POLICY


def test_html_and_script_in_outputs_and_markdown_never_run_in_the_report(tmp_path):
    root = make_project(tmp_path, "html_payload.py")
    run_stage("demo", root=root, progress=False)
    html = (root / "reports" / "demo.html").read_text()
    assert "visible cell" in html and "<table" in html
    for payload in ("<script", "onclick", "onerror", "evil.invalid", "javascript:", "pwned"):
        assert payload not in html
    assert "markdown link</a>" in html and "an HTML one" in html  # the text stays
    for ordinary in (  # what markdown is for survives the sanitizer
        '<h2 id="Ordinary-markdown-stays">',
        "<em>emphasis</em>",
        "<strong>strong</strong>",
        "<code>code</code>",
        '<a href="https://example.org/page">ordinary link</a>',
        '<th style="text-align:right;">share</th>',
        "<li>second item</li>",
        '<img alt="a dot" src="data:image/png;base64,',
    ):
        assert ordinary in html
    policy = f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
    assert policy in html
