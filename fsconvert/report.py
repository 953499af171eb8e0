"""Check reports for people: one HTML page per export (`check/index.html`), one per dataset run (`report.html`).

Both are self-contained (inline CSS, no script, no network) and written from what is on disk: an
export's page from its `check/check.json` numbers and its manifest, a run's page from the results and
each tuple's `check/check.json` (so tuples skipped as up to date are reported like converted ones).
Nothing depends on the clock: the same check writes the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .check import CHECK_DIR, REPORT, RIG
from .errors import OutputError
from .shards import Shard

if TYPE_CHECKING:
    from .batch import TupleResult

PAGE = CHECK_DIR / "index.html"
RUN_REPORT = Path("report.html")
"""In the output root of a dataset run."""
NUMBERS = (("camera_max_px", "cam max px", ".2e"), ("camera_mean_px", "cam mean px", ".2e"),
           ("iou", "IoU", ".4f"), ("depth_rel", "depth rel", ".1e"))
"""check.json key, column title and display format (as `fsconvert.check.format_report` prints them)."""

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .4em; }
h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
.verdict { padding: .6em 1em; border-radius: 4px; font-size: 1.15em; font-weight: bold; }
.verdict.pass { background: #dff3df; color: #135c13; }
.verdict.fail { background: #d62728; color: #fff; }
table { border-collapse: collapse; }
th, td { padding: .25em .6em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace, monospace; }
tr.fail { background: #fde2e2; }
tr.fail td.result { background: #d62728; color: #fff; font-weight: bold; }
tr.pass td.result { color: #135c13; font-weight: bold; }
td.problems { color: #a00; max-width: 40em; }
ul.warnings { color: #8a5a00; }
img.thumb { max-width: 160px; max-height: 120px; display: block; }
img.rig { max-width: 100%; border: 1px solid #ddd; }
dl { display: grid; grid-template-columns: max-content auto; gap: .15em 1em; margin: 0; }
dt { color: #555; } dd { margin: 0; font-family: ui-monospace, monospace; }
.note { color: #555; }
"""


def write_check_page(export_dir: str | Path, check: dict, manifest: dict, invalid: Iterable[int] = ()) -> Path:
    """Write `check/index.html` of the export at `export_dir` from its check.json content `check` and
    its manifest; `invalid` are the ids of views exported although marked valid=false."""
    invalid = set(invalid)
    views = sorted(check["views"], key=lambda v: v["passed"])  # failing first, otherwise in view order
    failing = [v for v in views if not v["passed"]]
    t = check["thresholds"]
    verdict = "PASS" if check["passed"] else "FAIL"
    title = f"{verdict}: {manifest['format']} export of {check['source']}"
    counts = f"{len(views) - len(failing)} of {len(views)} views pass"
    problems = "".join(f"<li>{escape(p)}</li>" for p in check["problems"])
    warnings = "".join(f"<li>warning: {escape(w)}</li>" for w in check.get("warnings", []))
    reader = check.get("reader") or manifest["format"]
    body = [
        f"<h1>fsconvert check: {escape(manifest['format'])} export of {escape(check['source'])}</h1>",
        f'<p class="verdict {verdict.lower()}">{verdict} — {counts}'
        + (f"; failing: {', '.join(str(v['id']) for v in failing)}" if failing else "") + "</p>",
        f'<ul class="problems">{problems}</ul>' if problems else "",
        f"<p>Read back by the rules of <b>{escape(reader)}</b> (<code>fsconvert check --reader</code>).</p>",
        f'<ul class="warnings">{warnings}</ul>' if warnings else "",
        "<h2>Thresholds</h2>",
        _definitions({"camera max px ≤": t["camera_px"], "silhouette IoU ≥": t["silhouette_iou"],
                      "mean relative depth ≤": t["depth_rel"]}),
        "<h2>Views</h2>",
        _views_table(views, invalid),
        '<p class="note">Numbers as in check.json (hover a number for all its digits); — : not measured '
        "(not rendered: the read-back camera is identical to the expected one and no overlay was asked).</p>",
        "<h2>Camera rig (read-back cameras)</h2>",
        f'<a href="{RIG.name}"><img class="rig" src="{RIG.name}" alt="camera rig: front and top views"></a>',
        "<h2>Export</h2>",
        _definitions(_export_facts(manifest)),
    ]
    path = Path(export_dir) / PAGE
    _write(path, _html(title, body))
    return path


def write_run_report(out_root: str | Path, results: Sequence[TupleResult], shard: Shard | None = None) -> Path:
    """Write `OUT/report.html` (a shard's: `OUT/report-shard-I-of-N.html`): every tuple of a dataset run
    (failures first) with its status, check verdict, worst camera error and IoU, linking each tuple's
    check page."""
    out_root = Path(out_root)
    rows = [_tuple_row(r, out_root) for r in results]
    rows.sort(key=lambda row: row[0])
    n = {s: sum(r.status == s for r in results) for s in ("converted", "skipped", "failed")}
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
        f"({PAGE.as_posix()}); numbers from its {REPORT.as_posix()}.</p>",
    ]
    path = out_root / (RUN_REPORT if shard is None else f"report-shard-{shard.index}-of-{shard.count}.html")
    _write(path, _html(f"{verdict}: fsconvert run of {len(results)} tuples", body))
    return path


def worst(check: dict) -> tuple[float | None, float | None]:
    """The largest camera max px and the smallest IoU over the views of a check.json (None: none measured)."""
    cam = [v["camera_max_px"] for v in check["views"] if v["camera_max_px"] is not None]
    iou = [v["iou"] for v in check["views"] if v["iou"] is not None]
    return (max(cam) if cam else None), (min(iou) if iou else None)


def _views_table(views: Sequence[dict], invalid: set[int]) -> str:
    head = "".join(f"<th>{escape(title)}</th>" for _, title, _ in NUMBERS)
    rows = [f"<tr><th>result</th><th>view</th><th>image</th><th>overlay</th>{head}<th>points</th>"
            "<th>render</th><th>problems</th></tr>"]
    for v in views:
        cls = "pass" if v["passed"] else "fail"
        name = escape(v["name"]) + (" <em>(valid=false)</em>" if v["id"] in invalid else "")
        if v["overlay"]:
            href = escape(Path(os.path.relpath(v["overlay"], CHECK_DIR)).as_posix())
            overlay = f'<a href="{href}"><img class="thumb" src="{href}" alt="overlay of view {v["id"]}"></a>'
        else:
            overlay = "—"
        numbers = "".join(_number(v[key], fmt) for key, _, fmt in NUMBERS)
        size = "×".join(map(str, v["render_size"])) if v["render_size"] else "—"
        rows.append(
            f'<tr class="{cls}" id="view-{v["id"]}"><td class="result">{cls.upper()}</td><td class="num">{v["id"]}'
            f"</td><td>{name}</td><td>{overlay}</td>{numbers}<td class=\"num\">{v['points']}</td><td>{size}</td>"
            f'<td class="problems">{"<br>".join(escape(p) for p in v["problems"])}</td></tr>'
        )
    return f"<table>{''.join(rows)}</table>"


def _number(value: float | None, fmt: str) -> str:
    if value is None:
        return '<td class="num">—</td>'
    exact = json.dumps(value)  # the digits check.json holds
    return f'<td class="num" title="{exact}" data-value="{exact}">{format(value, fmt)}</td>'


def _export_facts(manifest: dict) -> dict:
    source = manifest.get("source") or {}
    facts = {"format": manifest["format"], "written by": f"fsconvert {manifest.get('fsconvert', '?')}",
             "checked by": f"fsconvert {__version__}"}
    facts.update({f"source {k}": v for k, v in source.items()})
    facts["views"] = len(manifest.get("views", []))
    facts["excluded (valid=false)"] = manifest.get("excluded", [])
    facts.update(_flatten(manifest.get("options", {}), "option "))
    for key, value in manifest.items():
        if key not in {"fsconvert", "format", "source", "options", "views", "excluded"}:
            facts[key] = value
    return facts


def _flatten(d: dict, prefix: str) -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _definitions(facts: dict) -> str:
    def show(value: object) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(show(v))}</dd>" for k, v in facts.items()) + "</dl>"


def _tuple_row(r: TupleResult, out_root: Path) -> tuple[int, str]:
    """(sort rank: failures first, the row's HTML)."""
    check = _read_check(r.out_dir / REPORT) if r.status != "failed" else None
    page = r.out_dir / PAGE
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
           f'<td class="num">{r.views or "—"}</td>{_number(cam, ".2e")}{_number(iou, ".4f")}'
           f'<td class="problems">{escape(why)}</td></tr>')
    return rank, row


def _read_check(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("views"), list) else None


def _html(title: str, body: Sequence[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(b for b in body if b) + "\n</body>\n</html>\n")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror or exc}") from None
