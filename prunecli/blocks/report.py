"""The ``## Blocks removed`` section of report.md, from the report's ``blocks`` entry (see ``blocks.stage``)."""

from __future__ import annotations

from typing import Any

TABLE_ROWS = 20  # the removed candidates and the lowest-scored kept ones, up to this many rows


def blocks_markdown(report: dict[str, Any]) -> list[str]:
    """The ``## Blocks removed`` section of report.md (empty without a prune_blocks step)."""
    entry = report.get("blocks")
    if not entry:
        return []
    if entry.get("note"):
        return ["## Blocks removed", entry["note"] + "."]
    rows = entry["candidates"]
    shown = [row for row in rows if row["removed"]]
    shown += sorted((row for row in rows if not row["removed"] and row["score"] is not None),
                    key=lambda row: row["score"])[: max(0, TABLE_ROWS - len(shown))]  # fmt: skip
    verification = entry.get("verification") or {}
    verdict = "passed" if verification.get("passed") else "FAILED"
    summary = (
        f"Removed {len(entry['removed'])} of {len(rows)} candidates, lowest `{entry['criterion']}` score first "
        f"({entry['batches']} batches); verification against the original with those branches zeroed: "
        f"{verdict} (max abs diff {verification.get('max_abs_diff', 0):.3g})."
    )
    table = ["| candidate | kind | params | score | removed |", "|---|---|---:|---:|---|"]
    table += [f"| {row['name']} | {row['kind']} | {row['params']} | {row['score']:.4g} | "
              f"{'yes' if row['removed'] else ''} |" for row in sorted(shown, key=rows.index)]  # fmt: skip
    more = f"\n\n{len(rows) - len(shown)} more candidates in report.json." if len(rows) > len(shown) else ""
    return ["## Blocks removed", summary, "\n".join(table) + more]


def blocks_line(report: dict[str, Any]) -> str:
    """One line for the terminal: what prune_blocks removed, or why nothing."""
    entry = report["blocks"]
    if entry.get("note"):
        return f"blocks: {entry['note']}"
    verification = entry.get("verification") or {}
    verdict = "passed" if verification.get("passed") else "FAILED"
    return (
        f"blocks: removed {', '.join(entry['removed'])} ({len(entry['removed'])} of {len(entry['candidates'])} "
        f"candidates); verification {verdict} (max abs diff {verification.get('max_abs_diff', 0):.3g})"
    )
