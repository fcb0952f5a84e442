"""`train.answer_loss` at full size: the same loss and gradients as the model's own loss, and what it saves.

    PYTHONPATH=src python3 bench/answer_loss_gpu.py --arch qwen2_vl-7b --batch 32          # a CUDA machine, ~2 min
    PYTHONPATH=src .venv/bin/python bench/answer_loss_gpu.py --tiny --batch 4               # CPU dry run

Builds a random-weight model of a published shape in memory (bench/seeds_gpu.py: no disk, no hub), puts LoRA
r 16 on its language layers as `texocr train` does, with gradient checkpointing, collates `--batch` formula
images with texocr's collator, and runs one forward + backward under bf16 autocast twice on the same batch: the
model's own loss (logits at every position) and `texocr.answer_loss` (logits of the answer positions, chunked).
Prints one JSON line: both losses, the relative difference of the loss and of the LoRA gradients
(||g_answer - g_own|| / ||g_own||, the whole vector and the worst tensor), and per path the peak memory above the
weights and the time of the step (median of `--repeats`, after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="qwen2_vl-7b", help="bench/seeds_gpu.py ARCHS name")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="the arch's tiny version on the CPU (a dry run)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from PIL import Image, ImageDraw
    from seeds_gpu import build_random

    from texocr.answer_loss import AnswerLoss
    from texocr.data.collate import Collator
    from texocr.models.registry import get_family
    from texocr.sample import Sample

    device = "cpu" if args.tiny else "cuda"
    model, processor = build_random(args.arch, device, tiny=args.tiny)
    family = get_family(args.arch.split("-")[0])
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.config.use_cache = False
    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules=targets))
    model.train()
    with torch.no_grad():  # LoRA B starts at zero: give it values, so every gradient path is exercised
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)

    formulas = [rf"\frac{{a_{{{i}}}}}{{b+{i}}}" + r" = \sum_{k=0}^{n} x^{k}" * (1 + i % 3) for i in range(args.batch)]
    images = []
    for f in formulas:
        im = Image.new("RGB", (448, 112), "white")
        ImageDraw.Draw(im).text((8, 40), f[:70], fill="black")
        images.append(im)
    loaded = type("Loaded", (), {"family": family, "processor": processor, "model": model})()
    batch = Collator(loaded, 2048, normalize=True)([Sample(im, f, str(i)) for i, (im, f) in
                                                     enumerate(zip(images, formulas))])
    batch = {k: v.to(device) for k, v in dict(batch).items()}
    n_items = (batch["labels"] != -100).sum()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    answer = AnswerLoss.attach(model)
    assert answer is not None, "this model's head does not allow the answer loss"
    cuda = device == "cuda"

    def step(own: bool) -> tuple[float, dict[str, torch.Tensor], float, float]:
        model.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if cuda else 0
        t0 = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            if own:
                loss = model(**batch, num_items_in_batch=n_items).loss
            else:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                with answer.capture():
                    out = model(**inputs, logits_to_keep=1)
                loss = answer(out, batch["labels"], num_items_in_batch=n_items)
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30 if cuda else 0.0
        return float(loss.detach()), {n: p.grad.float().clone() for n, p in params}, dt, peak

    res: dict = {"arch": args.arch, "tiny": args.tiny, "batch": args.batch, "device": device,
                 "gpu": torch.cuda.get_device_name(0) if cuda else None,
                 "seq_len": int(batch["input_ids"].shape[1]), "answer_tokens": int(n_items),
                 "tokens": int(batch["attention_mask"].sum())}
    runs = {}
    for own in (True, False, True, False):  # warm-up of each, then the measured pass of each
        runs[own] = step(own)
    times = {True: [], False: []}
    peaks = {True: [], False: []}
    for _ in range(args.repeats):
        for own in (True, False):
            _, _, dt, peak = step(own)
            times[own].append(dt)
            peaks[own].append(peak)
    (l_own, g_own, _, _), (l_ans, g_ans, _, _) = runs[True], runs[False]
    num = sum(float((g_ans[n] - g_own[n]).pow(2).sum()) for n in g_own)
    den = sum(float(g_own[n].pow(2).sum()) for n in g_own)
    worst = max(float((g_ans[n] - g_own[n]).norm() / g_own[n].norm().clamp(min=1e-30)) for n in g_own)
    res.update(loss_own=l_own, loss_answer=l_ans, loss_rel_diff=abs(l_ans - l_own) / abs(l_own),
               grad_rel_diff=(num / den) ** 0.5, grad_rel_diff_worst_tensor=worst,
               step_s_own=statistics.median(times[True]), step_s_answer=statistics.median(times[False]),
               peak_above_weights_gib_own=max(peaks[True]), peak_above_weights_gib_answer=max(peaks[False]))
    print(json.dumps(res), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
