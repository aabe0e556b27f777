"""report.html and summary.html, parsed with the stdlib HTMLParser: structure, figures, embedded plots, links.

One real run (the demo config, 1 epoch) and one real batch (the sample CNN and MLP, --jobs 2) are
made once for the module; the pages must show report.json's / summary.json's figures, embed every
plot as a data: URI, fetch nothing, and link each model's report.html by a relative path.
"""

from __future__ import annotations

import base64
import copy
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import prunecli.batch.html as batch_html
from prunecli.batch.rows import BatchRow
from prunecli.batch.summary import SUMMARY_HEADER, summary_cells, summary_line
from prunecli.cli.app import app
from prunecli.report.html import markdown_html
from prunecli.report.write import write_report
from tests.conftest import CONFIGS, SAMPLES
from tests.test_report import SAMPLE

FAST = ["--set", "latency.repeats=3", "--set", "latency.warmup=1", "--set", "steps.3.epochs=1"]
VOID = {"meta", "img", "br", "hr", "link", "input", "circle", "line", "rect", "path"}


class Page(HTMLParser):
    """The parts of a page the tests read: title, tables by id (rows of cell texts), images, links, scripts.

    It also checks the nesting: every non-void element is closed, in order.
    """

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.title, self.headings, self.images, self.links, self.scripts = "", [], [], [], []
        self.tables: dict[str, list[list[str]]] = {}
        self.svg_circles = 0
        self._open: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        assert self._open == [], f"unclosed elements: {self._open}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag not in VOID:
            self._open.append(tag)
        if tag == "table":
            self._table = attributes.get("id") or f"table{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attributes.get("src") or "")
        elif tag == "a":
            self.links.append(attributes.get("href") or "")
        elif tag == "script":
            self.scripts.append(attributes.get("src"))
        elif tag == "circle":
            self.svg_circles += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            self.handle_starttag(tag, attrs)
        else:
            self.handle_starttag(tag, attrs)
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self._open and self._open[-1] == tag, f"</{tag}> closes {self._open[-1:]}"
        self._open.pop()
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._open and self._open[-1] == "title":
            self.title += data
        if self._open and self._open[-1] in ("h1", "h2"):
            self.headings.append(data.strip())


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def cli(*args: object) -> Any:
    return CliRunner().invoke(app, [str(arg) for arg in args])


def assert_self_contained(page: Page, folder: Path, *, images: list[str]) -> None:
    """No script at all; every image a data: URI holding exactly the PNG written beside the page."""
    assert page.scripts == []
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in page.images)
    assert embedded == sorted((folder / name).read_bytes() for name in images)
    assert not [link for link in page.links if "://" in link or link.startswith("//")]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo config (prune, then 1 epoch of fine-tuning) run once; its report.json and parsed report.html."""
    out = tmp_path_factory.mktemp("run")
    result = cli("run", CONFIGS / "digits_cnn_l2_50.yaml", "-o", out, "--json", *FAST)
    assert result.exit_code == 0, result.output
    return {"out": out, "report": json.loads((out / "report.json").read_text()), "page": read_page(out / "report.html")}


def test_report_html_shows_report_json_figures(run: dict[str, Any]) -> None:
    report, page = run["report"], run["page"]
    stages = report["stages"]
    assert stages == ["original", "pruned", "finetuned"]
    assert page.title == "prunecli report: digits_cnn.pt"
    markdown = (run["out"] / "report.md").read_text()
    assert page.headings == [page.title, *re.findall(r"^## (.+)$", markdown, flags=re.MULTILINE)]  # report.md's
    assert page.headings[1:] == ["Measurements", "Verification", "Gates", "Selection", "Channels kept per group"]
    header, *rows = page.tables["measurements"]
    assert header == ["metric", *stages, "vs original"]
    by_metric = {row[0]: row[1:] for row in rows}
    assert by_metric["params"][:3] == [f"{report[name]['params']:,}" for name in stages]
    assert by_metric["accuracy"][:3] == [f"{report[name]['accuracy'] * 100:.2f}%" for name in stages]
    p50 = next(label for label in by_metric if label.startswith("p50 ms torch/"))
    assert by_metric[p50][:3] == [f"{report[name]['latency'][0]['p50']:.3f}" for name in stages]
    _, *gates = page.tables["gates"]
    assert [(row[0], row[-1]) for row in gates] == [
        (name, "pass" if gate["passed"] else "FAIL") for name, gate in report["gates"].items()
    ]
    _, *groups = page.tables["groups"]
    assert [(row[0], row[2]) for row in groups] == [(g["name"], f"{g['kept']:,}") for g in report["groups"]]


def test_report_html_is_self_contained_and_written_with_the_run(run: dict[str, Any]) -> None:
    out, page = run["out"], run["page"]
    assert_self_contained(page, out, images=["channels.png"])
    listed = json.loads((out / ".prunecli-manifest.json").read_text())
    assert "report.html" in json.dumps(listed)
    assert "model: `" not in (out / "report.html").read_text()  # the facts' markdown was rendered, not pasted


def test_every_plot_is_embedded_and_names_are_escaped(tmp_path: Path) -> None:
    report = copy.deepcopy(SAMPLE)
    report["groups"][0]["name"] = "<script>alert(1)</script>"
    report["model"]["path"] = "zoo/a&<b>.pt"
    report["rounds"] = [{"round": 1, "stage": "pruned", "scheduled": {"steps.1.ratio": 0.5}, "macs_kept": 0.5,
                         "params": 60000, "accuracy": 0.9, "latency_ms_p50": 0.5, "speedup": 1.6,
                         "verification": {"passed": True}}]  # fmt: skip
    written = write_report(report, out_dir=tmp_path, plots=True)
    assert {"channels_plot", "rounds_plot", "report_html"} <= set(written)
    page = read_page(written["report_html"])
    assert_self_contained(page, tmp_path, images=["channels.png", "rounds.png"])
    assert page.title == "prunecli report: a&<b>.pt"
    assert page.tables["groups"][1][0] == "<script>alert(1)</script>"  # shown as text, never run
    rounds = [rows for rows in page.tables.values() if rows[0][:2] == ["round", "stage"]]  # rounds.md, as HTML
    assert "Rounds" in page.headings and [row[1] for row in rounds[0][1:]] == ["original", "pruned"]
    remote = markdown_html("![x](https://example.com/x.png) ![y](../y.png)", folder=tmp_path)
    assert "<img" not in remote and "[x: no image]" in remote


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The sample CNN and MLP through a prune pipeline with eval data (--jobs 2), then merged into another folder."""
    folder = tmp_path_factory.mktemp("batch")
    pipeline = folder / "pipeline.yaml"
    pipeline.write_text(yaml.safe_dump({
        "version": 1,
        "model": {"arch": str(SAMPLES / "archs.py") + ":DigitsCNN", "input_shape": [1, 1, 8, 8]},
        "data": {"format": "npz", "eval": str(SAMPLES / "digits_val.npz")},
        "steps": [{"kind": "score", "criterion": "l2"}, {"kind": "select", "ratio": 0.5}, {"kind": "prune"}],
        "latency": {"repeats": 2, "warmup": 0, "backends": ["torch"]},
    }))  # fmt: skip
    manifest = folder / "zoo.yaml"
    manifest.write_text(yaml.safe_dump([{"name": "mlp", "path": str(SAMPLES / "digits_mlp.pt"),
                                         "arch": str(SAMPLES / "archs.py") + ":DigitsMLP"}]))  # fmt: skip
    out = folder / "zoo"
    result = cli("batch", pipeline, SAMPLES / "digits_cnn.pt", manifest, "-o", out, "--jobs", "2", "--json")
    assert result.exit_code == 0, result.output
    merged = cli("batch-merge", out, "-o", folder / "merged", "--json")
    assert merged.exit_code == 0, merged.output
    return {"out": out, "merged": folder / "merged", "summary": json.loads(result.stdout)}


@pytest.mark.parametrize("where", ["out", "merged"])
def test_summary_html_has_a_row_per_model_the_scatter_and_working_links(batch: dict[str, Any], where: str) -> None:
    folder, rows = batch[where], batch["summary"]["rows"]
    page = read_page(folder / "summary.html")
    header, *table = page.tables["summary"]
    assert header == [*SUMMARY_HEADER, "report"]
    assert [row[:3] for row in table] == [[row["name"], "passed", "0"] for row in rows] and len(table) == 2
    assert_self_contained(page, folder, images=["accuracy_latency.png"])
    assert len(page.links) == 2 and all((folder / link).resolve() == (batch["out"] / row["name"] / "report.html")
                                        for link, row in zip(page.links, rows))  # fmt: skip
    assert not any(Path(link).is_absolute() for link in page.links)


def test_summary_scatter_falls_back_to_inline_svg(batch: dict[str, Any], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(batch_html, "plots_available", lambda: False)
    rows = [BatchRow.from_dict(row) for row in batch["summary"]["rows"]]
    rows.append(BatchRow(name="broken", model="broken.pt", status="bad_input", exit_code=2, error="cannot read"))
    cells = [summary_cells(row) for row in rows]
    written = batch_html.write_summary_html(rows, tmp_path, header=SUMMARY_HEADER, cells=cells, line=summary_line(rows))
    assert set(written) == {"html"} and not (tmp_path / "accuracy_latency.png").exists()
    page = read_page(written["html"])
    assert page.images == [] and page.svg_circles == 2 * 2  # before and after per model with both figures
    assert [row[1] for row in page.tables["summary"][1:]] == ["passed", "passed", "bad_input"]
    linked = [(tmp_path / link).resolve() for link in page.links]
    assert linked == [Path(row.output) / "report.html" for row in rows[:2]]  # the broken model has no report
