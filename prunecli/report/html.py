"""``report.html``: the run report as one self-contained page, rendered with jinja2 from the same data as report.md.

The stage, gate and group tables come from ``prunecli.report.rows`` (the rows report.md and the
terminal show); the sections other modules write as markdown (rounds, regularization,
reconstruction, blocks, sparsity, the plots) are converted to HTML with markdown-it, text escaped,
so both files always say the same. The page needs no network: CSS is inline and every plot is
embedded as a ``data:image/png;base64`` URI of the PNG the run wrote beside it::

    html = report_html(report, out_dir=Path("out/demo"), plot_section=..., rounds_section=...)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markupsafe import Markup

from prunecli.blocks.report import blocks_markdown
from prunecli.reconstruct.report import reconstruction_markdown
from prunecli.regularize.report import regularization_markdown
from prunecli.report.render import TEXT_COLUMNS, facts_markdown
from prunecli.report.rows import (
    Row,
    comparison_rows,
    gate_rows,
    gates_passed,
    group_rows,
    selection_line,
    verification_line,
)
from prunecli.sparsity.report import sparsity_markdown

REPORT_HTML = "report.html"
_VERDICTS = {"pass": "pass", "FAIL": "fail", "FAIL (unstable)": "fail"}


@dataclass
class HtmlTable:
    """A table of display strings for a template: ``id`` names it, ``numeric`` marks right-aligned columns."""

    id: str
    header: Row
    rows: list[Row]

    @property
    def numeric(self) -> list[bool]:
        """Per column: aligned right (numbers) or left (the first column and words)."""
        return [index > 0 and name not in TEXT_COLUMNS for index, name in enumerate(self.header)]

    @staticmethod
    def verdict(cell: str) -> str:
        """The CSS class of a cell: ``pass``/``fail`` for gate results, else empty."""
        return _VERDICTS.get(cell, "")


def environment() -> jinja2.Environment:
    """The jinja2 environment over the package's templates (``prunecli/report/templates``), autoescape on."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("prunecli.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name in a template fails the test, not the reader
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render_page(template: str, **context: Any) -> str:
    """Render ``template`` (a file in ``prunecli/report/templates``) with ``context``."""
    return environment().get_template(template).render(**context)


def data_uri(folder: Path, name: str) -> str | None:
    """``name`` (a PNG file name beside the page) as a base64 data URI; None when it is not such a file."""
    path = folder / name
    if Path(name).name != name or path.suffix.lower() != ".png" or not path.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def markdown_html(markdown: str, *, folder: Path) -> Markup:
    """``markdown`` (a report section) as HTML: raw HTML escaped, images embedded from ``folder`` as data URIs."""
    parser = MarkdownIt("commonmark", {"html": False}).enable("table")
    parser.add_render_rule("image", _embedded_image)
    return Markup(parser.render(markdown, {"folder": folder}))


def _embedded_image(renderer: Any, tokens: list[Any], index: int, options: Any, env: dict[str, Any]) -> str:
    """An image as a data URI; a file that is not beside the page (or a remote address) shows as its alt text."""
    token = tokens[index]
    alt = renderer.renderInlineAsText(token.children or [], options, env)
    uri = data_uri(env["folder"], str(token.attrGet("src") or ""))
    if uri is None:
        return escapeHtml(f"[{alt}: no image]")
    return f'<img src="{uri}" alt="{escapeHtml(alt)}">'


def report_html(
    report: dict[str, Any], *, out_dir: Path, plot_section: str | None = None, rounds_section: str | None = None
) -> str:
    """The report as one HTML page, in report.md's order (see ``prunecli.report.render.report_markdown``).

    ``out_dir`` holds the PNGs the sections name (channels.png, rounds.png, ...): they are embedded.
    """
    gate_header, gates = gate_rows(report)
    group_header, groups = group_rows(report)
    extra = regularization_markdown(report) + reconstruction_markdown(report)
    extra += blocks_markdown(report) + sparsity_markdown(report)
    section = lambda markdown: markdown_html(markdown, folder=out_dir) if markdown else None  # noqa: E731
    model = Path(str((report.get("model") or {}).get("path") or "model")).name
    return render_page(
        "report.html.j2",
        title=f"prunecli report: {model}",
        facts=section(facts_markdown(report)),
        measurements=HtmlTable("measurements", *comparison_rows(report)),
        rounds=section(rounds_section),
        verification=verification_line(report),
        gates=HtmlTable("gates", gate_header, gates) if gates else None,
        gates_ok=gates_passed(report),
        selection=selection_line(report) if report.get("selection") else None,
        extra=section("\n\n".join(extra)),
        groups=HtmlTable("groups", group_header, groups) if groups else None,
        plots=section(plot_section),
    )
