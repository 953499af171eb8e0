"""The check page: one self-contained HTML page per export (`check/index.html`), and the pieces of HTML the
run page (`fsconvert.runpage`) shares with it.

Written from what is on disk (the export's `check/check.json` numbers and its manifest), inline CSS, no
script, no network. Nothing depends on the clock: the same check writes the same bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

from . import __version__
from .protocol import CHECK_DIR, CHECK_PAGE, RIG
from .writers import write_text

NUMBERS = (("camera_max_px", "cam max px", ".2e"), ("camera_mean_px", "cam mean px", ".2e"),
           ("iou", "IoU", ".4f"), ("depth_rel", "depth rel", ".1e"), ("pixel_shift_px", "px shift", ".4f"),
           ("pixel_ncc", "px NCC", ".5f"), ("pixel_diff", "px diff", ".2f"), ("swapped_diff", "R↔B diff", ".2f"),
           ("block_diff", "block diff", ".2f"), ("alpha_error", "alpha err", ".2e"))
"""check.json key, column title and display format (as `fsconvert.check.format_check` prints them)."""

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


def write_check_page(export_dir: str | Path, check: dict[str, Any], manifest: dict[str, Any],
                     invalid: Iterable[int] = ()) -> Path:
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
                      "mean relative depth ≤": t["depth_rel"], "pixel shift px ≤": t["pixel_shift_px"],
                      "pixel NCC (luma) ≥": t["pixel_ncc"], "pixel mean difference ≤": t["pixel_diff"],
                      "64-px block mean difference ≤": t["block_diff"], "alpha error ≤": t["alpha_error"]}),
        "<h2>Views</h2>",
        _views_table(views, invalid),
        '<p class="note">Numbers as in check.json (hover a number for all its digits); — : not measured '
        "(not rendered: the read-back camera is identical to the expected one and no overlay was asked; no alpha "
        "channel). Pixels: the exported image against the source image re-derived through the read-back camera "
        "(shift of textured tiles, luma NCC and mean difference in 8-bit levels, the same with red and blue "
        "exchanged, the worst 64-px block; an original placed unchanged is its source, byte for byte).</p>",
        "<h2>Camera rig (read-back cameras)</h2>",
        f'<a href="{RIG.name}"><img class="rig" src="{RIG.name}" alt="camera rig: front and top views"></a>',
        "<h2>Export</h2>",
        _definitions(_export_facts(manifest)),
    ]
    path = Path(export_dir) / CHECK_PAGE
    write_text(path, html_page(title, body))
    return path


def _views_table(views: Sequence[dict[str, Any]], invalid: set[int]) -> str:
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
        numbers = "".join(number_cell(v.get(key), fmt) for key, _, fmt in NUMBERS)  # older check.json: —
        size = "×".join(map(str, v["render_size"])) if v["render_size"] else "—"
        rows.append(
            f'<tr class="{cls}" id="view-{v["id"]}"><td class="result">{cls.upper()}</td><td class="num">{v["id"]}'
            f"</td><td>{name}</td><td>{overlay}</td>{numbers}<td class=\"num\">{v['points']}</td><td>{size}</td>"
            f'<td class="problems">{"<br>".join(escape(p) for p in v["problems"])}</td></tr>'
        )
    return f"<table>{''.join(rows)}</table>"


def number_cell(value: float | None, fmt: str) -> str:
    if value is None:
        return '<td class="num">—</td>'
    exact = json.dumps(value)  # the digits check.json holds
    return f'<td class="num" title="{exact}" data-value="{exact}">{format(value, fmt)}</td>'


def _export_facts(manifest: dict[str, Any]) -> dict[str, Any]:
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


def _flatten(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _definitions(facts: dict[str, Any]) -> str:
    def show(value: object) -> str:
        return value if isinstance(value, str) else json.dumps(value)

    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(show(v))}</dd>" for k, v in facts.items()) + "</dl>"


def html_page(title: str, body: Sequence[str]) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(b for b in body if b) + "\n</body>\n</html>\n")
