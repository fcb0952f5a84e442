"""report.html: one self-contained page (images as data URIs) to read an evaluation.

    write_report("runs/eval/report.html", runs, images, title="tiny-qwen on data/synth")

It shows the metrics (side by side when two models are compared), the most frequent token confusions, and
the samples worst first: input image, reference, prediction, a token diff (deletions red and struck, insertions
green) and the rendered prediction when a renderer was available.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3}
code{font-family:ui-monospace,monospace;font-size:.9em;white-space:pre-wrap;word-break:break-all}
del{background:#fdd;color:#a00}
ins{background:#dfd;color:#060;text-decoration:none}
img{max-width:420px;max-height:120px;background:#fff}
.ok{color:#060}.bad{color:#a00}.err{color:#a00;font-style:italic}
.num{text-align:right;font-variant-numeric:tabular-nums}
"""


@dataclass
class RunView:
    """One model's evaluation, as the report needs it."""

    name: str
    records: list[dict[str, Any]]
    """predictions.jsonl rows, in sample order (`prediction`, `reference`, `edit_distance`, `error`, ...)."""
    metrics: dict[str, Any]
    rendered: list[Any | None] = field(default_factory=list)
    """Rendered prediction per record (PIL.Image, PNG bytes or None)."""
    confusions: list[tuple[str, str, int]] = field(default_factory=list)


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


def sample_order(records: Sequence[dict[str, Any]]) -> list[int]:
    """Worst first: errors, then by normalized edit distance (distance / reference length), then by id."""
    def badness(i: int) -> tuple[float, float, str]:
        r = records[i]
        if r.get("error"):
            return (float("inf"), 0.0, str(r.get("id", "")))
        dist = float(r.get("edit_distance", 0))
        return (dist / max(1, len(r.get("ref_tokens", []))), dist, str(r.get("id", "")))

    return sorted(range(len(records)), key=badness, reverse=True)


def render_html(runs: Sequence[RunView], images: Sequence[Any | None], *, title: str, limit: int = 200,
                notes: Sequence[str] = ()) -> str:
    """The report as an HTML string (see the module docstring); `runs[0]` decides the worst-first order."""
    main = runs[0]
    order = sample_order(main.records)
    shown = order[:limit]
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    rows = []
    for i in shown:
        rec = main.records[i]
        img = images[i] if i < len(images) else None
        src = f"<img class=input alt='input' src='{data_uri(img)}'>" if img is not None else "<i>(no image)</i>"
        rows.append(f"<tr><td><code>{html.escape(str(rec.get('id', i)))}</code><br>{src}</td>"
                    f"<td><code>{html.escape(rec.get('reference', ''))}</code></td>"
                    + "".join(_prediction_cell(r, i) for r in runs) + "</tr>")
    more = (f"<p>{len(order) - len(shown)} more samples (the best ones) are in predictions.jsonl.</p>"
            if len(order) > len(shown) else "")
    note_html = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>{note_html}"
            f"<h2>Metrics</h2>{_metrics_table(runs)}"
            f"<h2>Most frequent token confusions</h2>{''.join(_confusions_table(r) for r in runs)}"
            f"<h2>Samples, worst first</h2><p>Token diff: <del>reference tokens missed</del> "
            f"<ins>tokens the model added</ins>.</p>"
            f"<table id=samples><tr><th>input</th><th>reference</th>{head}</tr>{''.join(rows)}</table>{more}"
            f"</body></html>\n")


def write_report(path: str | Path, runs: Sequence[RunView], images: Sequence[Any | None], *, title: str,
                 limit: int = 200, notes: Sequence[str] = ()) -> Path:
    """Write report.html (self-contained) and return its path."""
    path = Path(path)
    path.write_text(render_html(runs, images, title=title, limit=limit, notes=notes), encoding="utf-8")
    return path
