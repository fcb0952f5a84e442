"""A plain transformers + peft LoRA/QLoRA training loop (`--loop plain`), and the same loop through Unsloth
(`--loop unsloth`): the baselines `texocr train` is measured against (bench/train_speed.py).

No texocr code: the model directory (built by bench/train_speed.py), its processor, the images and labels
are read with transformers/PIL alone. Same recipe as texocr's: bf16 weights + bf16 autocast, SDPA,
gradient checkpointing (non-reentrant), LoRA r=16/alpha=16 on the language model's linear layers,
AdamW, gradient clipping at 1.0, labels only on the answer. Batches are encoded once up front, so
data preparation costs this loop nothing (the strictest baseline).

    python3 bench/plain_loop.py --model /tmp/bench/qwen2vl-2b --data /tmp/bench/data --batch 32 \\
        --warmup 10 --steps 30 [--qlora] [--loop unsloth] [--json out.json]

Unsloth (`FastVisionModel`, as the anchors measured it: `use_gradient_checkpointing="unsloth"`, LoRA r=16/alpha=16
on the language layers' attention and MLP, vision frozen) takes the same batches and the same step; where it is
not installed the line says so (`"error": "not installed: ..."`) and the exit code is 0.

Prints one JSON line: samples_per_s and tokens_per_s over the timed steps, peak_alloc_gib, peak_reserved_gib,
seq_len.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from PIL import Image

LANG_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
INSTRUCTION = "Write the LaTeX of this formula."


def load_unsloth(model_dir: str, qlora: bool) -> torch.nn.Module:
    """The model through Unsloth's FastVisionModel (imported first: it patches transformers on import)."""
    from unsloth import FastVisionModel

    model, _ = FastVisionModel.from_pretrained(model_dir, load_in_4bit=qlora, dtype=torch.bfloat16,
                                               use_gradient_checkpointing="unsloth")
    model = FastVisionModel.get_peft_model(model, finetune_vision_layers=False, finetune_language_layers=True,
                                           finetune_attention_modules=True, finetune_mlp_modules=True,
                                           r=16, lora_alpha=16, lora_dropout=0, bias="none", random_state=0)
    FastVisionModel.for_training(model)
    return model


def load(model_dir: str, qlora: bool, device: str = "cuda", loop: str = "plain") -> tuple[torch.nn.Module, object]:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import (
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
        BitsAndBytesConfig,
        Qwen2VLProcessor,
    )

    kwargs: dict = {"dtype": torch.bfloat16, "attn_implementation": "sdpa"}
    if loop == "unsloth":
        model = load_unsloth(model_dir, qlora)
    elif qlora:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16)
        kwargs["device_map"] = {"": device}
    if loop != "unsloth":
        model = AutoModelForImageTextToText.from_pretrained(model_dir, **kwargs)
        if qlora:
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.to(device)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=LANG_TARGETS, task_type="CAUSAL_LM"))
        model.enable_input_require_grads()
    model.config.use_cache = False
    model.train()
    # The saved processor has no video processor config; build the stock processor from its parts.
    parts = (AutoImageProcessor.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir))
    template = (Path(model_dir) / "chat_template.jinja").read_text()
    try:
        from transformers.models.qwen2_vl.video_processing_qwen2_vl import (
            Qwen2VLVideoProcessor,
        )

        processor = Qwen2VLProcessor(*parts, Qwen2VLVideoProcessor(), chat_template=template)
    except ImportError:  # no torchvision (the CPU dry run only): texocr's images-only subclass of it
        from texocr.models.qwen_vl import _no_video

        processor = _no_video(Qwen2VLProcessor)(*parts, chat_template=template)
    return model, processor


def encode(processor: object, images: list[Image.Image], answers: list[str]) -> dict[str, torch.Tensor]:
    """Prompt (chat template, image placeholder) + answer + <|im_end|>; labels only on the answer."""
    tok = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": INSTRUCTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    enc = processor(text=[prompt] * len(images), images=images, padding=True, padding_side="right",
                    return_tensors="pt")
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ans = [tok(a, add_special_tokens=False)["input_ids"] + [end] for a in answers]
    plen = enc["attention_mask"].sum(1).tolist()
    total = max(p + len(a) for p, a in zip(plen, ans))
    ids = torch.full((len(ans), total), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    # other per-token outputs (mm_token_type_ids: 1 on image tokens) extend over the answer with 0 (text)
    per_token = {k: torch.zeros_like(ids) for k, v in enc.items()
                 if k not in ("input_ids", "attention_mask") and v.shape[:2] == enc["input_ids"].shape}
    for b, (p, a) in enumerate(zip(plen, ans)):
        ids[b, :p] = enc["input_ids"][b, :p]
        ids[b, p : p + len(a)] = torch.tensor(a)
        mask[b, : p + len(a)] = 1
        labels[b, p : p + len(a)] = torch.tensor(a)
        for k, v in per_token.items():
            v[b, :p] = enc[k][b, :p]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, **per_token,
            "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="folder with labels.jsonl")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--qlora", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the script on a machine without a GPU")
    ap.add_argument("--loop", choices=["plain", "unsloth"], default="plain")
    args = ap.parse_args()

    method = "qlora" if args.qlora else "lora"
    if args.loop == "unsloth":
        try:
            import unsloth  # noqa: F401 -- before transformers, as Unsloth asks
        except Exception as e:  # noqa: BLE001 - absent or broken: a row that says so, not a failed benchmark
            print(json.dumps({"loop": "unsloth", "method": method, "batch": args.batch,
                              "error": f"not installed: {type(e).__name__}: {str(e)[:300]}"}))
            return
    torch.manual_seed(0)
    model, processor = load(args.model, args.qlora, args.device, args.loop)
    cuda = args.device.startswith("cuda")
    rows = [json.loads(x) for x in (Path(args.data) / "labels.jsonl").read_text().splitlines() if x.strip()]
    n_batches = args.warmup + args.steps
    batches = []
    for i in range(n_batches):
        chunk = [rows[(i * args.batch + j) % len(rows)] for j in range(args.batch)]
        imgs = [Image.open(Path(args.data) / r["image"]).convert("RGB") for r in chunk]
        batches.append({k: v.pin_memory() if cuda else v for k, v in encode(processor, imgs, [r["latex"] for r in chunk]).items()})
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, weight_decay=0.0)

    def step(cpu_batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = {k: v.to(args.device, non_blocking=True) for k, v in cpu_batch.items()}
        with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for b in batches[: args.warmup]:
        step(b)
    sync()
    t0 = time.perf_counter()
    for b in batches[args.warmup :]:
        loss = step(b)
    sync()
    dt = time.perf_counter() - t0
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[args.warmup :])
    out = {
        "loop": args.loop, "method": method, "batch": args.batch, "steps": args.steps,
        "samples_per_s": args.steps * args.batch / dt, "tokens_per_s": tokens / dt, "s_per_step": dt / args.steps,
        "tokens_per_sample": tokens / (args.steps * args.batch),
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0) if cuda else None,
        "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "seq_len": int(batches[0]["input_ids"].shape[1]), "image_tokens": int(batches[0]["image_grid_thw"].prod(-1).sum()) // 4,
        "final_loss": float(loss),
    }
    print(json.dumps(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
