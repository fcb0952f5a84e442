"""texocr's training step levers at full size (issue 16): where the step's GPU time goes, and whether each lever
keeps the loss and gradients, on the model bench/train_speed.py builds.

    M=/tmp/texocr-bench/qwen2vl-7b D=/tmp/texocr-bench/data
    PYTHONPATH=/tmp/site:src python3 bench/fast_train_gpu.py --model $M --data $D --batch 32 --grads /tmp/g-off.pt \
        --off fused_lora lora_autocast_inputs liger_kernels offload_checkpoints answer_loss vision_no_grad padding_free
    PYTHONPATH=/tmp/site:src python3 bench/fast_train_gpu.py --model $M --data $D --batch 32 --grads /tmp/g-on.pt \
        --compare /tmp/g-off.pt --json $OUT/levers.json
    PYTHONPATH=src .venv/bin/python bench/fast_train_gpu.py --model /tmp/texocr-bench/qwen2vl-tiny \
        --data /tmp/texocr-bench/data --batch 2 --steps 2  # CPU dry run

The model is loaded, adapted and fed exactly as `texocr train` does (`load_model(training=True)`, the Collator,
`AnswerLoss`), and the step is the Trainer's (bf16 autocast, forward, backward, clip, AdamW) written out so that
each phase can be timed with CUDA events: vision tower, whole forward, loss, backward, optimizer. Then one step
under torch.profiler: the top operators by GPU time. `--off LEVER ...` turns levers off (the `train.*` keys of
`texocr.fast_train`, `answer_loss`, and `vision_no_grad`); `--set model.KEY=VALUE` flips a model key.

`--grads FILE` first runs one forward + backward on the first batch with LoRA B drawn at random (it starts at
zero, which would leave A's gradients zero) and saves the loss and the flattened adapter gradients; `--compare
REF` reports the relative difference of loss and gradients (||g - g_ref|| / ||g_ref||) against another run's file.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

LEVERS = {"fused_lora", "lora_autocast_inputs", "liger_kernels", "offload_checkpoints", "answer_loss", "vision_no_grad",
          "padding_free"}


def main() -> None:
    from texocr import fast_train
    from texocr.answer_loss import AnswerLoss
    from texocr.config import ModelConfig
    from texocr.data.collate import Collator
    from texocr.data.sources import open_source
    from texocr.models import packing
    from texocr.models.loading import _submodule, load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6, help="timed steps (after 3 warm-up steps)")
    ap.add_argument("--method", default="lora")
    ap.add_argument("--off", nargs="*", default=[], choices=sorted(LEVERS), help="levers to turn off")
    ap.add_argument("--grads", default=None, help="save the first batch's loss and adapter gradients here")
    ap.add_argument("--compare", default=None, help="a --grads file of another run to compare with")
    ap.add_argument("--set", nargs="*", default=[], help="model.KEY=VALUE (bool/int) overrides")
    ap.add_argument("--json", default=None)
    ap.add_argument("--trace", default=None, help="write a Chrome trace of the profiled step")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    family = "qwen2_5_vl" if "2.5-" in Path(args.model).name else "qwen2_vl"  # bench/train_speed.py's folder names
    keys: dict = {"name_or_path": args.model, "family": family, "method": args.method, "lora_r": 16,
                  "lora_alpha": 16, "gradient_checkpointing": True, "dtype": "bfloat16" if cuda else "float32",
                  "attn_implementation": "sdpa"}
    keys["vision_no_grad"] = "vision_no_grad" not in args.off
    for kv in args.set:
        k, v = kv.removeprefix("model.").split("=")
        keys[k] = {"true": True, "false": False}.get(v.lower(), int(v) if v.isdigit() else v)
    torch.manual_seed(0)
    t = time.time()
    loaded = load_model(ModelConfig(**keys), training=True, device=dev)
    load_s = time.time() - t
    model = loaded.model
    on = {k for k in LEVERS if k not in args.off}
    applied = {"fused_lora": fast_train.fuse_lora(model) if "fused_lora" in on else 0,
               "lora_autocast_inputs": fast_train.lora_autocast_inputs(model) if "lora_autocast_inputs" in on else 0,
               "liger_kernels": fast_train.liger_kernels(model) if "liger_kernels" in on else 0}
    loss_fn = AnswerLoss.attach(model) if "answer_loss" in on else None
    offload = "offload_checkpoints" in on
    packed = "padding_free" in on and packing.use_packed_attention(model)
    applied["padding_free"] = int(packed)
    collate = Collator(loaded, 1024, pack=packed)
    samples = list(itertools.islice(open_source(args.data), args.batch * (args.steps + 4)))
    batches = [{k: v.pin_memory() if cuda and torch.is_tensor(v) else v
                for k, v in collate(samples[i:i + args.batch]).items()}
               for i in range(0, len(samples) - args.batch + 1, args.batch)][: args.steps + 4]

    def to_dev(b: dict) -> dict:
        return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
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

    def forward_loss(batch: dict) -> tuple[torch.Tensor, object]:
        """The loss as `texocr train` computes it; returns (loss, the event after the model's forward)."""
        n = (batch["labels"] != -100).sum()
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=cuda):
            if loss_fn is None:
                out = model(**batch)
                return out.loss, event()
            labels = batch.pop("labels")
            with loss_fn.capture():
                out = model(**batch, logits_to_keep=1)
            e1 = event()
            return loss_fn(out, labels, num_items_in_batch=n), e1

    def step(cpu: dict) -> dict[str, float]:
        batch = to_dev(cpu)
        e0 = event()
        with fast_train.offloaded_checkpoints(offload) as moved:  # forward and backward, as texocr train does
            loss, e1 = forward_loss(batch)
            e2 = event()
            after_forward = torch.cuda.memory_allocated() / 2**30 if cuda else 0.0
            loss.backward()
        e3 = event()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        e4 = event()
        if cuda:
            torch.cuda.synchronize()
        return {"vision_ms": ms(marks["v0"], marks["v1"]), "forward_ms": ms(e0, e1), "loss_ms": ms(e1, e2),
                "backward_ms": ms(e2, e3), "optimizer_ms": ms(e3, e4), "step_ms": ms(e0, e4),
                "loss": float(loss.detach()), "alloc_after_forward_gib": after_forward,
                "offloaded_tensors": moved["tensors"], "offloaded_gib": moved["bytes"] / 2**30}

    check = {}
    if args.grads:  # before any optimizer step: the same weights in every run (seeded load, seeded B)
        gen = torch.Generator(device="cpu").manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        loss, _ = forward_loss(to_dev(batches[0]))
        loss.backward()
        names = sorted(n for n, p in model.named_parameters() if p.requires_grad)
        grads = dict(model.named_parameters())
        flat = torch.cat([grads[n].grad.float().flatten() for n in names]).cpu()
        torch.save({"loss": float(loss.detach()), "names": names, "grad": flat}, args.grads)
        check = {"check_loss": float(loss.detach())}
        if args.compare:
            ref = torch.load(args.compare)
            assert ref["names"] == names, "different adapter parameters"
            check |= {"ref_loss": ref["loss"], "loss_rel_diff": abs(check["check_loss"] - ref["loss"]) / abs(ref["loss"]),
                      "grad_rel_diff": float((flat - ref["grad"]).norm() / ref["grad"].norm()),
                      "grad_cosine": float(torch.nn.functional.cosine_similarity(flat.double(), ref["grad"].double(),
                                                                                 dim=0))}
        opt.zero_grad(set_to_none=True)
        print(json.dumps(check), flush=True)

    for b in batches[:3]:
        step(b)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    rows = [step(b) for b in batches[3:3 + args.steps]]
    wall = time.perf_counter() - t
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].shape[1]
                 for b in batches[3:3 + args.steps])
    res = {"keys": {k: v for k, v in keys.items() if k != "name_or_path"}, "off": sorted(args.off), "applied": applied,
           **check,
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
