"""Where a `texocr train` step's GPU time goes, on the model bench/train_speed.py builds (issue 16).

    PYTHONPATH=src python3 bench/train_profile.py --model /tmp/texocr-bench/qwen2vl-7b --data /tmp/texocr-bench/data \
        --batch 32 --json $OUT/profile.json --trace $OUT/trace.json.gz
    PYTHONPATH=src .venv/bin/python bench/train_profile.py --model /tmp/texocr-bench/qwen2vl-tiny \
        --data /tmp/texocr-bench/data --batch 2 --steps 2  # CPU dry run

The model is loaded, adapted and fed exactly as `texocr train` does (`load_model(training=True)`, the Collator,
`AnswerLoss`), and the step is the Trainer's (bf16 autocast, forward, backward, clip, AdamW) written out so that
each phase can be timed with CUDA events: vision tower, whole forward, loss, backward, optimizer. Then one step
under torch.profiler: the top operators by GPU time. `--set model.KEY=VALUE` flips a model key (e.g.
`vision_no_grad=false`, `gradient_checkpointing=false`) to see what a lever is worth on one loaded process.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch


def main() -> None:
    from texocr.answer_loss import AnswerLoss
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.data.sources import open_source
    from texocr.models.loading import _submodule, load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after 3 warm-up steps)")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--no-answer-loss", action="store_true")
    ap.add_argument("--set", nargs="*", default=[], help="model.KEY=VALUE (bool/int) overrides")
    ap.add_argument("--json", default=None)
    ap.add_argument("--trace", default=None, help="write a Chrome trace of the profiled step")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    keys: dict = {"name_or_path": args.model, "family": "qwen2_vl", "method": args.method, "lora_r": 16,
                  "lora_alpha": 16, "gradient_checkpointing": True, "dtype": "bfloat16" if cuda else "float32",
                  "attn_implementation": "sdpa"}
    for kv in args.set:
        k, v = kv.removeprefix("model.").split("=")
        keys[k] = {"true": True, "false": False}.get(v.lower(), int(v) if v.isdigit() else v)
    torch.manual_seed(0)
    t = time.time()
    loaded = load_model(ModelConfig(**keys), training=True, device=dev)
    load_s = time.time() - t
    model = loaded.model
    loss_fn = None if args.no_answer_loss else AnswerLoss.attach(model)
    collate = Collator(loaded, 1024)
    samples = list(itertools.islice(open_source(args.data), args.batch * (args.steps + 4)))
    batches = [{k: v.pin_memory() if cuda else v for k, v in collate(samples[i:i + args.batch]).items()}
               for i in range(0, len(samples) - args.batch + 1, args.batch)][: args.steps + 4]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0, fused=cuda)

    def event() -> object:
        if cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(a: object, b: object) -> float:
        return a.elapsed_time(b) if cuda else (b - a) * 1000  # type: ignore[union-attr,operator]

    marks: dict[str, object] = {}
    vision = _submodule(model.get_base_model(), loaded.family.vision_module)
    vision.register_forward_pre_hook(lambda *_: marks.__setitem__("v0", event()))
    vision.register_forward_hook(lambda *_: marks.__setitem__("v1", event()))

    def step(cpu: dict) -> dict[str, float]:
        batch = {k: v.to(dev, non_blocking=True) for k, v in cpu.items()}
        n = (batch["labels"] != -100).sum()
        e0 = event()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            if loss_fn is not None:
                labels = batch.pop("labels")
                with loss_fn.capture():
                    out = model(**batch, logits_to_keep=1)
                e1 = event()
                loss = loss_fn(out, labels, num_items_in_batch=n)
            else:
                out = model(**batch)
                e1 = event()
                loss = out.loss
        e2 = event()
        loss.backward()
        e3 = event()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        e4 = event()
        if cuda:
            torch.cuda.synchronize()
        return {"vision_ms": ms(marks["v0"], marks["v1"]), "forward_ms": ms(e0, e1), "loss_ms": ms(e1, e2),
                "backward_ms": ms(e2, e3), "optimizer_ms": ms(e3, e4), "step_ms": ms(e0, e4), "loss": float(loss.detach())}

    for b in batches[:3]:
        step(b)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    rows = [step(b) for b in batches[3:3 + args.steps]]
    wall = time.perf_counter() - t
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[3:3 + args.steps])
    res = {"keys": {k: v for k, v in keys.items() if k != "name_or_path"}, "answer_loss": loss_fn is not None,
           "batch": args.batch, "steps": len(rows), "samples_per_s": len(rows) * args.batch / wall,
           "tokens_per_sample": tokens / (len(rows) * args.batch), "padded_len": int(batches[3]["input_ids"].shape[1]),
           "load_s": round(load_s, 1), **{k: round(v, 2) for k, v in mean.items()}}
    if cuda:
        res |= {"peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
                "gpu": torch.cuda.get_device_name(0)}
    print(json.dumps(res), flush=True)

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        step(batches[-1])
    sort = "cuda_time_total" if cuda else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)
    print(table)
    if args.trace:
        prof.export_chrome_trace(args.trace)
    if args.json:
        Path(args.json).write_text(json.dumps(res | {"top_ops": table}) + "\n")


if __name__ == "__main__":
    main()
