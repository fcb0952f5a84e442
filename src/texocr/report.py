"""report.html: one self-contained page (images as data URIs) to read an evaluation.

    write_report("runs/eval/report.html", runs, images, title="tiny-qwen on data/synth")

It shows the metrics (side by side when two models are compared), the most frequent token confusions, and
the samples worst first: the input image and reference across the table, then a column per model with its
prediction, a token diff (deletions red and struck, insertions green) and the rendered prediction when a
renderer was available. Columns are headed by short names; the models' full names are listed above.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# No page may scroll sideways, and images show at their natural size wherever they fit: the samples table takes
# the page's width in equal model columns (fixed layout: their width does not depend on what is in them), each
# sample's input spans the table above them, and an image is shrunk only where it is wider than its column.
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
#samples{width:100%;table-layout:fixed}
tr.sample td{background:#fafafa;border-top:2px solid #999}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3;overflow-wrap:anywhere}
code{font-family:ui-monospace,monospace;font-size:.9em;white-space:pre-wrap;word-break:break-all}
del{background:#fdd;color:#a00}
ins{background:#dfd;color:#060;text-decoration:none}
img{max-width:100%;height:auto;background:#fff}
h1,p,li{overflow-wrap:anywhere}
.ok{color:#060}.bad{color:#a00}.err{color:#a00;font-style:italic}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""


@dataclass
class RunView:
    """One model's evaluation, as the report needs it."""

    name: str
    """The column heading: short (`before`, `after`, a model folder's name); `full_name` says what it is."""
    records: list[dict[str, Any]]
    """predictions.jsonl rows, in sample order (`prediction`, `reference`, `edit_distance`, `error`, ...)."""
    metrics: dict[str, Any]
    rendered: list[Any | None] = field(default_factory=list)
    """Rendered prediction per record (PIL.Image, PNG bytes or None)."""
    confusions: list[tuple[str, str, int]] = field(default_factory=list)
    full_name: str = ""
    """The model (and adapter) in full, e.g. absolute paths; listed above the tables."""


def short_names(models: Sequence[tuple[str, str | None]]) -> list[str]:
    """Column headings for `(model, adapter)` pairs: the last folder names (`default-model + adapter`), with
    more of each path where two would read the same."""
    def name(model: str, adapter: str | None, depth: int) -> str:
        tail = lambda p: "/".join(Path(p).parts[-depth:]) if p else ""
        return tail(model) + (f" + {tail(adapter)}" if adapter else "")

    for depth in range(1, 12):
        names = [name(m, a, depth) for m, a in models]
        if len(set(names)) == len(names):
            return names
    names = [name(m, a, 1) for m, a in models]  # the same model twice: numbered
    return [n if k == 0 or n not in names[:k] else f"{n} #{k + 1}" for k, n in enumerate(names)]


def data_uri(image: Any) -> str:
    """A PIL image or PNG bytes as a `data:image/png;base64,...` URI."""
    if not isinstance(image, (bytes, bytearray)):
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        image = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(bytes(image)).decode("ascii")


def token_diff_html(pred_tokens: Sequence[str], ref_tokens: Sequence[str]) -> str:
    """The token alignment of prediction against reference as HTML (`<del>` reference-only, `<ins>` added)."""
    from rapidfuzz.distance import Levenshtein

    parts: list[str] = []
    for op in Levenshtein.opcodes(list(ref_tokens), list(pred_tokens)):
        ref = html.escape(" ".join(ref_tokens[op.src_start: op.src_end]))
        pred = html.escape(" ".join(pred_tokens[op.dest_start: op.dest_end]))
        if op.tag == "equal":
            parts.append(ref)
        if op.tag in ("delete", "replace"):
            parts.append(f"<del>{ref}</del>")
        if op.tag in ("insert", "replace"):
            parts.append(f"<ins>{pred}</ins>")
    return "<code>" + " ".join(parts) + "</code>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return html.escape(str(value))


def _metrics_table(runs: Sequence[RunView]) -> str:
    keys = list(dict.fromkeys(k for r in runs for k in r.metrics))
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th>" + "".join(f"<td class=num>{_fmt(r.metrics.get(k, ''))}</td>" for r in runs)
        + "</tr>" for k in keys)
    return f"<table id=metrics><tr><th>metric</th>{head}</tr>{rows}</table>"


def _confusions_table(run: RunView) -> str:
    if not run.confusions:
        return "<p>No token errors.</p>"
    rows = "".join(
        f"<tr><td><code>{html.escape(a) or '∅'}</code></td><td><code>{html.escape(b) or '∅'}</code></td>"
        f"<td class=num>{c}</td></tr>" for a, b, c in run.confusions)
    return (f"<h3>{html.escape(run.name)}</h3><table class=confusions><tr><th>reference token</th>"
            f"<th>predicted token</th><th>count</th></tr>{rows}</table>")


def _prediction_cell(run: RunView, i: int) -> str:
    rec = run.records[i]
    if rec.get("error"):
        return f"<td><span class=err>{html.escape(rec['error'])}</span></td>"
    dist = rec.get("edit_distance", "?")
    mark = "<span class=ok>✓ exact</span>" if rec.get("exact") else \
        f"<span class=bad>{dist} token edit{'' if dist == 1 else 's'}</span>"
    img = run.rendered[i] if i < len(run.rendered) else None
    rendered = (f"<br><img class=rendered alt='rendered prediction' src='{data_uri(img)}'>" if img is not None
                else "<br><i>(not rendered)</i>" if run.rendered else "")
    return (f"<td>{mark}<br><code>{html.escape(rec.get('prediction', ''))}</code><br>"
            f"{token_diff_html(rec.get('pred_tokens', []), rec.get('ref_tokens', []))}{rendered}</td>")


def badness(r: dict[str, Any]) -> tuple[float, float, str]:
    """A record's place in the report (larger: shown earlier): errors, then normalized edit distance (distance /
    reference length), then the distance, then the id."""
    if r.get("error"):
        return (float("inf"), 0.0, str(r.get("id", "")))
    dist = float(r.get("edit_distance", 0))
    return (dist / max(1, len(r.get("ref_tokens", []))), dist, str(r.get("id", "")))


def sample_order(records: Sequence[dict[str, Any]]) -> list[int]:
    """Worst first (`badness`); equal ones in their original order."""
    return sorted(range(len(records)), key=lambda i: badness(records[i]), reverse=True)


def render_html(runs: Sequence[RunView], images: Sequence[Any | None], *, title: str, limit: int = 200,
                notes: Sequence[str] = ()) -> str:
    """The report as an HTML string (see the module docstring); `runs[0]` decides the worst-first order."""
    main = runs[0]
    order = sample_order(main.records)
    shown = order[:limit]
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    cols = f"<colgroup>{'<col>' * len(runs)}</colgroup>"
    rows = []
    for i in shown:
        rec = main.records[i]
        img = images[i] if i < len(images) else None
        src = f"<img class=input alt='input' src='{data_uri(img)}'>" if img is not None else "<i>(no image)</i>"
        # two rows per sample: the input across the table, then one equal column per model (see _CSS)
        rows.append(f"<tr class=sample><td colspan={len(runs)}><code>{html.escape(str(rec.get('id', i)))}</code>"
                    f"<br>{src}<br>reference: <code>{html.escape(rec.get('reference', ''))}</code></td></tr>"
                    "<tr>" + "".join(_prediction_cell(r, i) for r in runs) + "</tr>")
    more = (f"<p>{len(order) - len(shown)} more samples (the best ones) are in predictions.jsonl.</p>"
            if len(order) > len(shown) else "")
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    named = [r for r in runs if r.full_name and r.full_name != r.name]
    if named:
        note_html += "<ul>" + "".join(
            f"<li><b>{html.escape(r.name)}</b>: <code>{html.escape(r.full_name)}</code></li>" for r in named) + "</ul>"
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{note_html}"
            f"<h2>Metrics</h2>{_metrics_table(runs)}"
            f"<h2>Most frequent token confusions</h2>{''.join(_confusions_table(r) for r in runs)}"
            f"<h2>Samples, worst first</h2><p>Token diff: <del>reference tokens missed</del> "
            f"<ins>tokens the model added</ins>.</p>"
            f"<table id=samples>{cols}<tr>{head}</tr>{''.join(rows)}</table>{more}"
            f"</body></html>\n")


def write_report(path: str | Path, runs: Sequence[RunView], images: Sequence[Any | None], *, title: str,
                 limit: int = 200, notes: Sequence[str] = ()) -> Path:
    """Write report.html (self-contained) and return its path."""
    path = Path(path)
    path.write_text(render_html(runs, images, title=title, limit=limit, notes=notes), encoding="utf-8")
    return path
