"""`python -m texocr.demo` (what `make demo` runs): measure a model, fine-tune it, measure it again, on this CPU.

    python -m texocr.demo                        # writes runs/demo/, about 3 minutes of training
    python -m texocr.demo --minutes 1 --out runs/demo-short
    python -m texocr.demo --model DIR            # the LoRA recipe on another compact model than the default
    python -m texocr.demo --quick                # a few steps on a tiny model (what the tests run)

Two cases, one path; only the starting model and the training method differ:
  default   texocr's shipped compact model exists: LoRA toward handwriting   (configs/demo/default-lora.yaml)
  scratch   its files are missing: a compact model of the same architecture with random weights, fully
            trained                                                         (configs/demo/scratch-full.yaml)

Steps, each through texocr's own code: (1) short formulas from the formula generator, training and test from
different seeds, with every test formula that also occurs in training removed; (2) a handwriting-style test set
rendered by `texocr data render`; (3) "before": `texocr.evaluate.score` of the starting model on it; (4)
`texocr.train.train` on handwriting-style synthetic data rendered on the fly, stopped by `train.max_minutes`;
(5) "after": the same scoring of the saved result; (6) the report. Output (`--out`):

    index.html          the demo's report: before/after table, loss curve, sample predictions rendered
    before_after.json   case, models, both metric sets, timings
    eval/               texocr eval's outputs: report.html (both models side by side), predictions.jsonl and
                        metrics.json of the fine-tuned model, compare/ those of the starting model
    train/              the training run (config.yaml, model/ or adapter/, logs/, loss_curve.png)
    test/               the rendered test set (labels.jsonl, images/, montage.png); formulas/ its sources
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texocr.cpu import cpu_threads
from texocr.errors import TexocrError
from texocr.outdir import marker_name, prepare_output_dir

if TYPE_CHECKING:
    from texocr.config import Config
    from texocr.evaluate import EvalResult

MARKER = marker_name("demo")
CONFIG_PACKAGE = ("assets", "configs", "demo")
"""Where the demo's configs live inside the installed package (package data: a wheel has them too);
`configs/demo` in the repository links there."""
SHORT_FORMULAS = [2, 1]
"""Token-length histogram in bins of 10 (`FormulaGenerator(length_hist=...)`): 3-19 tokens, two thirds under 10,
so that a model trained for minutes on a CPU has something it can learn to read."""
TABLE_KEYS = ("exact_match", "exprate_le1", "bleu4", "edit_score", "cer", "valid_rate", "image_match")


@dataclass
class Plan:
    """What this demo run starts from and how it trains."""

    case: str
    """`default`, `scratch`, or `model` (a compact model given with --model)."""
    config: Path
    model: str
    """The starting model's directory."""
    description: str


# ---------------------------------------------------------------- steps


def demo_config(name: str) -> Path:
    """The packaged demo config `name` (e.g. `default-lora.yaml`), found through importlib.resources."""
    from importlib.resources import files

    path = Path(str(files("texocr").joinpath(*CONFIG_PACKAGE, name)))
    if not path.is_file():
        raise TexocrError(f"the demo config {name} is missing from the installed package ({path}): a damaged "
                          "install? Reinstall texocr")
    return path


def plan(args: argparse.Namespace, out: Path) -> Plan:
    """Pick the case: --model, else the shipped default model when it exists, else a fresh random model."""
    from texocr.infer import resolve_model

    lora = demo_config("default-lora.yaml")
    if args.model:
        if not Path(args.model, "config.json").is_file():
            raise TexocrError(f"--model {args.model}: not a model directory (no config.json)")
        return Plan("model", lora, args.model, f"LoRA fine-tuning of {args.model} toward handwriting")
    why = "--quick"
    if not args.quick:
        try:
            return Plan("default", lora, resolve_model("default"),
                        "texocr's default model, LoRA-fine-tuned toward handwriting")
        except TexocrError:  # a damaged install: the files of the default model are missing
            why = "no default model here"
    from texocr.models.compact import build_compact

    size = "tiny" if args.quick else args.size
    path = build_compact(out / "init", size=size, seed=args.seed)
    return Plan("scratch", demo_config("scratch-full.yaml"), str(path),
                f"{why}: a compact model ({size}) from random weights, fully trained")


def write_formulas(folder: Path, n_train: int, n_test: int, seed: int) -> tuple[Path, Path, int]:
    """Training and test formula files from two generator seeds; test formulas seen in training are dropped."""
    from texocr.data.formulas import FormulaGenerator
    from texocr.latex import normalize

    folder.mkdir(parents=True, exist_ok=True)
    train = [FormulaGenerator(seed, length_hist=SHORT_FORMULAS).formula(i) for i in range(n_train)]
    seen = {normalize(f) for f in train}
    gen = FormulaGenerator(seed + 1, length_hist=SHORT_FORMULAS)
    test: list[str] = []
    dropped, i = 0, 0
    while len(test) < n_test:
        f = gen.formula(i)
        i += 1
        if normalize(f) in seen:
            dropped += 1
        else:
            test.append(f)
    paths = folder / "train.txt", folder / "test.txt"
    for path, formulas in zip(paths, (train, test)):
        path.write_text("\n".join(formulas) + "\n", encoding="utf-8")
    return paths[0], paths[1], dropped


def render_test_set(formulas: Path, out: Path, n: int, seed: int, strength: float = 1.0) -> None:
    """`texocr data render`, handwriting style at the training data's augmentation `strength`: the first `n`
    formulas of `formulas`, each once."""
    from texocr.cli import main as cli

    rc = cli(["data", "render", "--n", str(n), "--out", str(out), "--seed", str(seed), "--style", "handwritten",
              "--formulas", str(formulas), "--in-order", "--augment-strength", str(strength)])
    if not (out / "labels.jsonl").is_file() or rc not in (0, 1):  # 1: a few formulas failed to render
        raise TexocrError(f"rendering the test set failed (exit {rc}; texocr data render said why, above)")


def training_config(p: Plan, args: argparse.Namespace, out: Path, formulas: Path) -> Config:
    """The case's YAML config with the demo's paths and time budget filled in."""
    from texocr.config import load_config

    overrides = ["--model.name_or_path", p.model, "--data.formulas", str(formulas),
                 "--train.output_dir", str(out / "train"), "--train.max_minutes", str(args.minutes),
                 "--train.seed", str(args.seed), "--data.seed", str(args.seed)]
    if args.quick:
        overrides += ["--data.synthetic_n", "32", "--train.max_steps", "4", "--train.batch_size", "8",
                      "--train.logging_steps", "1", "--eval.max_new_tokens", "12"]
    return load_config(p.config, overrides)


def evaluate(model: str, adapter: str | None, samples: list[Any], cfg: Config) -> EvalResult:
    """`texocr.evaluate.score` of one model on the test samples (rendering on, for image_match and the report).

    The model is loaded with the training config's model section (family, image budget), so that before and
    after see the images exactly as training did.
    """
    from texocr.evaluate import score
    from texocr.infer import Recognizer

    rec = Recognizer.load(model, adapter, device="cpu", family=cfg.model.family, min_pixels=cfg.model.min_pixels,
                          max_pixels=cfg.model.max_pixels, batch_size=cfg.eval.batch_size,
                          max_new_tokens=cfg.eval.max_new_tokens, num_beams=cfg.eval.num_beams,
                          glyph_height=cfg.eval.glyph_height)
    return score(rec, samples, cfg.eval, keep_images=True)


# ---------------------------------------------------------------- report


def table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """The before/after metrics as a fixed-width text table (one row per model)."""
    keys = [k for k in TABLE_KEYS if k in before or k in after]
    lines = [f"{'':8}" + "".join(f"{k:>13}" for k in keys)]
    for name, m in (("before", before), ("after", after)):
        lines.append(f"{name:8}" + "".join(f"{m[k]:>13.3f}" if isinstance(m.get(k), float) else f"{'-':>13}"
                                            for k in keys))
    return "\n".join(lines)


def write_index(out: Path, summary: dict[str, Any], before: EvalResult, after: EvalResult, *, shown: int = 12) -> Path:
    """index.html: what ran, the before/after table, the loss curve and the first samples with both predictions."""
    from texocr.report import data_uri

    keys = [k for k in TABLE_KEYS if k in after.metrics]
    head = "".join(f"<th>{k}</th>" for k in keys)
    rows = "".join(f"<tr><th>{name}</th>" + "".join(f"<td>{m.get(k, 0):.3f}</td>" for k in keys) + "</tr>"
                   for name, m in (("before", before.metrics), ("after", after.metrics)))
    curve = out / "train" / "loss_curve.png"
    curve_html = f"<img id=curve alt='loss curve' src='{data_uri(curve.read_bytes())}'>" if curve.is_file() else "<p>(none)</p>"
    samples = []
    for i, (b, a) in enumerate(zip(before.predictions[:shown], after.predictions[:shown])):
        img = f"<img src='{data_uri(after.images[i])}'>" if i < len(after.images) else ""
        rendered = after.rendered[i] if i < len(after.rendered) else None
        ren = f"<img src='{data_uri(rendered)}'>" if rendered is not None else "<i>(not rendered)</i>"
        mark = lambda r: "✓" if r["exact"] else f"{r['edit_distance']} edits"
        samples.append(f"<tr><td>{img}</td><td><code>{html.escape(a['reference'])}</code></td>"
                       f"<td><code>{html.escape(b['prediction'])}</code><br>{mark(b)}</td>"
                       f"<td><code>{html.escape(a['prediction'])}</code><br>{mark(a)}</td><td>{ren}</td></tr>")
    t = summary["seconds"]
    page = f"""<!doctype html><html><head><meta charset=utf-8><title>texocr demo</title><style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}} table{{border-collapse:collapse;margin:.5em 0 1.5em}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}} #samples{{width:100%}}
img{{max-width:calc(100vw - 4em);height:auto}} p{{overflow-wrap:anywhere}} code{{white-space:pre-wrap;word-break:break-all}}
</style></head><body>
<h1>texocr demo: measure, fine-tune, measure again</h1>
<p><b>Case: {summary['case']}</b>: {html.escape(summary['description'])}.<br>
Test set: {summary['n_test']} handwriting-style synthetic formulas (generator seed distinct from training; test
formulas also present in training removed). Training: {summary['steps']} steps ({summary['method']}) in
{t['train']:.0f} s on {summary['threads']} CPU thread(s); whole demo {t['total']:.0f} s.</p>
<h2>Before and after</h2><table><tr><th></th>{head}</tr>{rows}</table>
<h2>Loss curve</h2>{curve_html}
<h2>First {len(samples)} test samples</h2>
<table id=samples><tr><th>input</th><th>reference</th><th>before</th><th>after</th><th>after, rendered</th></tr>{''.join(samples)}</table>
<p>Every sample, worst first, with token diffs: <a href="eval/report.html">eval/report.html</a>.</p>
</body></html>
"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"


# ---------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole demo (see the module docstring); returns what before_after.json holds."""
    import torch

    from texocr.data.sources import open_source
    from texocr.evaluate import write_outputs
    from texocr.train import train

    t0 = time.perf_counter()
    out = Path(args.out)
    prepare_output_dir(out, "demo", overwrite=getattr(args, "overwrite", False))  # a previous demo's is replaced
    threads = cpu_threads()
    torch.set_num_threads(threads)
    p = plan(args, out)
    print(f"texocr demo: case {p.case}: {p.description}", flush=True)
    cfg = training_config(p, args, out, out / "formulas" / "train.txt")
    n_test = 8 if args.quick else args.n_test
    _train_f, test_f, dropped = write_formulas(out / "formulas", 400 if args.quick else 20_000, n_test,
                                              args.seed)
    print(f"formulas: {dropped} generated test formulas also occur in training and were dropped", flush=True)
    render_test_set(test_f, out / "test", n_test, seed=args.seed + 1000, strength=cfg.data.augment_strength)
    test = list(open_source(str(out / "test")))
    if not test:  # a score on 0 images would read as a measurement
        raise TexocrError(f"the rendered test set {out / 'test'} holds no usable image: nothing to measure")
    times = {"setup": time.perf_counter() - t0}

    t = time.perf_counter()
    before = evaluate(p.model, None, test, cfg)
    times["before"] = time.perf_counter() - t
    print(f"before: exact match {before.metrics['exact_match']:.3f} on {len(test)} test images", flush=True)

    print(f"training ({cfg.model.method}) for up to {args.minutes:g} minutes on {threads} CPU thread(s); the progress "
          f"bar counts to train.max_steps={cfg.train.max_steps}, an upper bound", flush=True)
    t = time.perf_counter()
    result = train(cfg)
    times["train"] = time.perf_counter() - t
    method = cfg.model.method
    trained, adapter = (str(out / "train" / "model"), None) if method == "full" else \
        (p.model, str(out / "train" / "adapter"))

    t = time.perf_counter()
    after = evaluate(trained, adapter, test, cfg)
    times["after"] = time.perf_counter() - t
    write_outputs(out / "eval", [(trained, adapter, after), (p.model, None, before)], str(out / "test"),
                  notes=[f"texocr demo ({p.case}): the fine-tuned model first, the starting model second."],
                  names=["after", "before"])
    times["total"] = time.perf_counter() - t0
    summary = {"case": p.case, "description": p.description, "model": p.model, "method": method,
               "trained": trained, "adapter": adapter, "steps": result.steps, "n_test": len(test),
               "threads": threads, "before": before.metrics, "after": after.metrics,
               "seconds": {k: round(v, 1) for k, v in times.items()}}
    (out / "before_after.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_index(out, summary, before, after)
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m texocr.demo", description=__doc__.split("\n")[0])
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The demo's options (also `texocr demo`)."""
    p.add_argument("--out", default="runs/demo", help="output folder (new, empty, or a previous demo's; default runs/demo)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out that the demo did not create")
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget (default 3)")
    p.add_argument("--n-test", type=int, default=200, help="test images to render (default 200)")
    p.add_argument("--model", help="a compact model directory to LoRA-fine-tune instead of the default model")
    p.add_argument("--size", default="base", help="compact size built for the scratch case (default model files missing)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny model, a few steps, 8 test images (for tests)")


def main(argv: list[str] | argparse.Namespace | None = None) -> int:
    """`python -m texocr.demo [options]` (a list of arguments) or `texocr demo` (parsed arguments)."""
    import logging

    args = argv if isinstance(argv, argparse.Namespace) else build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("texocr").setLevel(logging.INFO)
    try:
        s = run(args)
    except TexocrError as e:
        print(f"texocr demo: error: {e}", file=sys.stderr)
        return 2
    t = s["seconds"]
    print(f"\ntexocr demo ({s['case']}): {s['description']}")
    print(f"{s['steps']} training steps ({s['method']}) in {t['train']:.0f} s; test set: {s['n_test']} "
          f"handwriting-style images; whole demo {t['total']:.0f} s\n")
    print(table(s["before"], s["after"]))
    out = Path(args.out)
    print(f"\nreport: {out / 'index.html'} (samples: {out / 'eval' / 'report.html'}; numbers: {out / 'before_after.json'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
