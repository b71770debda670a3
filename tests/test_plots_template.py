"""`dvc plots show` and `dvc plots diff` pages that render with no network.

The template inlines vega, vega-lite and vega-embed out of a pinned wheel, each checked by
its SHA-256. The pages of a real pipeline run open in headless Chromium with the network cut:
every chart draws, no console error, no request leaves file://.
"""

import re
import zipfile

import pytest
from browser import Browser

from churnlab.errors import ChurnlabError
from churnlab.report.plots_template import (
    TEMPLATE_PATH,
    VEGA_MEMBERS,
    build_template,
    download_vega_wheel,
    read_vega_libraries,
)

from conftest import committed_copy, run

# Waits (up to 15 s) until every plot div holds a drawn chart, then describes each: an SVG's
# marks, or a canvas's size and how many of its pixels are not transparent.
CHARTS = """async () => {
  const divs = () => Array.from(document.querySelectorAll('body > div[id]'));
  const drawn = d => d.querySelector('canvas, svg.marks');
  for (let i = 0; i < 150 && !divs().every(drawn); i++) await new Promise(r => setTimeout(r, 100));
  return divs().map(d => {
    const canvas = d.querySelector('canvas');
    let inked = 0;
    if (canvas && canvas.width && canvas.height) {
      const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      for (let i = 3; i < px.length; i += 4) if (px[i] > 0) inked++;
    }
    const svg = d.querySelector('svg.marks');
    return {id: d.id, inked: inked,
            marks: svg ? svg.querySelectorAll('path, rect, line, text').length : 0};
  });
}"""
REMOTE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def test_the_template_inlines_the_libraries_and_holds_only_dvcs_plots_placeholder():
    page = build_template(["var vega = 1;", "var vegaLite = 2;\n//# sourceMappingURL=x.map\n"])
    assert page.count("{plot_divs}") == 1
    assert "{scripts}" not in page and "{refresh_tag}" not in page  # no CDN tags from DVC
    assert "var vega = 1;" in page and "var vegaLite = 2;" in page
    assert "sourceMappingURL" not in page
    assert "default-src 'none'" in page
    assert not REMOTE.search(page)


@pytest.mark.parametrize("source", ["a = '</script><img src=x>';", "a = '{scripts}';"])
def test_a_library_that_cannot_be_inlined_is_refused(source):
    with pytest.raises(ChurnlabError, match="cannot be inlined"):
        build_template([source])


def test_a_member_whose_checksum_differs_is_refused(tmp_path):
    wheel = tmp_path / "panel-1.9.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member in VEGA_MEMBERS:
            archive.writestr(member, "tampered")
    first = next(iter(VEGA_MEMBERS))
    with pytest.raises(ChurnlabError, match=f"{re.escape(first)}: SHA-256 mismatch"):
        read_vega_libraries(wheel)


def test_the_pinned_wheel_holds_the_three_libraries_with_their_checksums():
    libraries = read_vega_libraries(download_vega_wheel())
    assert [len(s) > 50_000 for s in libraries] == [True, True, True]
    assert "vegaEmbed" in libraries[2]


@pytest.fixture(scope="module")
def plots_project(pipeline_project, tmp_path_factory):
    """A copy of the pipeline's project (its git history too) with the run committed."""
    copy = committed_copy(pipeline_project, tmp_path_factory.mktemp("plots") / "project")
    run(["churnlab", "plots-template"], copy)
    return copy


@pytest.fixture(scope="module")
def browser():
    opened = Browser()
    yield opened
    opened.close()


@pytest.mark.pipeline
@pytest.mark.parametrize("command", [["dvc", "plots", "show"], ["dvc", "plots", "diff", "HEAD"]])
def test_a_plots_page_draws_every_chart_offline(plots_project, browser, command):
    out = plots_project / "dvc_plots" / "index.html"
    out.unlink(missing_ok=True)
    run(command, plots_project)
    html = out.read_text()
    assert not REMOTE.search(html), "the page loads nothing from elsewhere"
    seen = browser.check(out, probe=CHARTS)
    assert seen.console_errors == [] and seen.page_errors == []
    assert seen.outside_requests == [] and seen.failed_requests == []
    charts = {c["id"]: c for c in seen.probe}
    assert set(charts) >= {"ROC", "Precision-recall", "Calibration", "Feature_importance"}
    for chart in charts.values():
        assert chart["marks"] > 10 or chart["inked"] > 100, f"{chart['id']} did not draw"
    if "diff" in command:
        assert "HEAD" in seen.text and "workspace" in seen.text  # both revisions in the legend


@pytest.mark.pipeline
def test_without_the_template_dvc_fails_and_never_writes_a_page_that_calls_a_cdn(plots_project):
    template = plots_project / TEMPLATE_PATH
    kept = template.read_bytes()
    out = plots_project / "dvc_plots" / "index.html"
    out.unlink(missing_ok=True)
    template.unlink()
    try:
        failed = run(["dvc", "plots", "show"], plots_project, check=False)
    finally:
        template.write_bytes(kept)
    assert failed.returncode != 0
    assert "{plot_divs}" in failed.stderr  # README: run `churnlab plots-template` (make setup)
    assert not out.exists()
