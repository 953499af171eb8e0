"""The run page: one self-contained HTML page per dataset run (`OUT/report.html`; a shard's
`OUT/report-shard-I-of-N.html`), every tuple with its status, check verdict and numbers, linking its check page.

Written from the results and each tuple's `check/check.json` (so tuples skipped as up to date are shown like
converted ones).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from . import __version__
from .checkpage import html_page, number_cell
from .job import TupleResult, counts
from .protocol import CHECK_JSON, CHECK_PAGE
from .shards import Shard
from .writers import write_text

RUN_PAGE = Path("report.html")
"""In the output root of a dataset run."""


def write_run_page(out_root: str | Path, results: Sequence[TupleResult], shard: Shard | None = None) -> Path:
    """Write `OUT/report.html` (a shard's: `OUT/report-shard-I-of-N.html`): every tuple of a dataset run
    (failures first) with its status, check verdict, worst camera error and IoU, linking each tuple's
    check page."""
    out_root = Path(out_root)
    rows = [_tuple_row(r, out_root) for r in results]
    rows.sort(key=lambda row: row[0])
    n = counts(results)
    check_failed = sum(r.check_passed is False for r in results)
    ok = not n["failed"] and not check_failed
    verdict = "PASS" if ok else "FAIL"
    summary = (f"{len(results)} tuples: converted {n['converted']}, skipped {n['skipped']} (up to date), "
               f"failed {n['failed']}; check failed for {check_failed}")
    head = ("<tr><th>tuple</th><th>status</th><th>check</th><th>views</th><th>worst cam max px</th>"
            "<th>worst IoU</th><th>why</th></tr>")
    body = [
        f"<h1>fsconvert run of {len(results)} tuples</h1>",
        f'<p class="verdict {verdict.lower()}">{verdict} — {escape(summary)}</p>',
        f"<table>{head}{''.join(row[1] for row in rows)}</table>",
        f'<p class="note">fsconvert {escape(__version__)}. Each tuple links its check page '
        f"({CHECK_PAGE.as_posix()}); numbers from its {CHECK_JSON.as_posix()}.</p>",
    ]
    path = out_root / (RUN_PAGE if shard is None else f"report-shard-{shard.index}-of-{shard.count}.html")
    write_text(path, html_page(f"{verdict}: fsconvert run of {len(results)} tuples", body))
    return path


def worst(check: dict[str, Any]) -> tuple[float | None, float | None]:
    """The largest camera max px and the smallest IoU over the views of a check.json (None: none measured)."""
    cam = [v["camera_max_px"] for v in check["views"] if v["camera_max_px"] is not None]
    iou = [v["iou"] for v in check["views"] if v["iou"] is not None]
    return (max(cam) if cam else None), (min(iou) if iou else None)


def _tuple_row(r: TupleResult, out_root: Path) -> tuple[int, str]:
    """(sort rank: failures first, the row's HTML)."""
    check = _read_check(r.out_dir / CHECK_JSON) if r.status != "failed" else None
    page = r.out_dir / CHECK_PAGE
    name = escape(r.name)
    if page.is_file():
        name = f'<a href="{escape(Path(os.path.relpath(page, out_root)).as_posix())}">{name}</a>'
    cam, iou = worst(check) if check else (None, None)
    if r.status == "failed":
        verdict, why, rank = "—", r.reason, 0
    elif check is None:
        verdict, why, rank = "not checked", "", 2
    else:
        bad = [v for v in check["views"] if not v["passed"]]
        verdict, rank = ("PASS", 2) if check["passed"] else ("FAIL", 1)
        why = "; ".join(check["problems"] + [f"view {v['id']}: {'; '.join(v['problems'])}" for v in bad])
    cls = "fail" if rank < 2 else "pass"
    row = (f'<tr class="{cls}"><td>{name}</td><td class="result">{r.status}</td><td>{verdict}</td>'
           f'<td class="num">{r.views or "—"}</td>{number_cell(cam, ".2e")}{number_cell(iou, ".4f")}'
           f'<td class="problems">{escape(why)}</td></tr>')
    return rank, row


def _read_check(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("views"), list) else None
