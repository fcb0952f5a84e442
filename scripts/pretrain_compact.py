"""Pretrain texocr's compact model from scratch on formulas rendered on the fly (issue 6).

GPU machine (16 cores, no TeX: the pip renderer, ziamath + resvg), in commands of at most 10 minutes. Each
command trains for `--seconds`, then evaluates and writes bf16 weights (shards <= 15 MB) to `--export`:

    python scripts/pretrain_compact.py --config configs/compact/pretrain.yaml --model .carry/model \\
        --seconds 470 --budget-seconds 1400 --done-seconds 0 --export $OUT/weights --val .carry/val-im2latex

The next command continues from `<out>/state.pt` (weights + optimizer, kept while the machine stays warm) or,
on a fresh machine, from the weights brought back and copied into `--model` (optimizer restarts with a short
warmup). `--done-seconds` is the training time already spent: the learning rate follows a cosine over
`--budget-seconds` of training time, not steps, because throughput is only known once running.

CPU smoke run (tiny model, a few steps, ~1 minute on 2 cores):

    .venv/bin/python scripts/pretrain_compact.py --config configs/compact/pretrain.yaml --size tiny \\
        --out runs/compact-smoke --seconds 20 --budget-seconds 20 --train.batch_size 4 \\
        --train.dataloader_workers 2 --export runs/compact-smoke/export --val-limit 8

Why a loop of its own rather than `texocr.train` (whose resume works: checkpoints keep the in-memory key
layout): pretraining is bounded by wall-clock seconds on machines that vanish between commands, so it needs a
time-based schedule, weights-only hand-off through 16 MB files and, above all, a data stream that keeps the
GPU busy. Rendering (~10 formulas/s per core) is far slower than a 15M-parameter model trains, so each
DataLoader worker keeps a *replay pool* of clean renders and yields every new render plus `--replay` pool
images, each with a fresh augmentation. The model, processor, label mask (`family.encode` via `Collator`)
and generation (`Recognizer`) are texocr's own, as in `texocr train`.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("texocr.pretrain_compact")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Other --section.key value pairs override the config (e.g. --train.lr 5e-4).")
    p.add_argument("--config", required=True, help="a YAML config, e.g. configs/compact/pretrain.yaml")
    p.add_argument("--out", default=None, help="working folder (default: train.output_dir); holds state.pt")
    p.add_argument("--model", default=None, help="a compact model folder to start from (else a random init)")
    p.add_argument("--grow", default=None, metavar="SIZE",
                   help="deepen the --model to this compact size first (texocr.models.compact.grow_compact)")
    p.add_argument("--size", default="small",
                   help="size of a random init (texocr.models.compact.SIZES; bench/compact.md)")
    p.add_argument("--seconds", type=float, required=True, help="training seconds in this command")
    p.add_argument("--budget-seconds", type=float, required=True, help="planned training seconds of all commands")
    p.add_argument("--done-seconds", type=float, default=None,
                   help="training seconds already done (default: from state.pt, else 0)")
    p.add_argument("--export", default=None, help="folder for the bf16 weights (shards <= 15 MB) and logs")
    p.add_argument("--save-every", type=float, default=150, help="export every N seconds too (crash safety)")
    p.add_argument("--printed-ratio", type=float, default=0.75, help="share of printed (vs handwriting) renders")
    p.add_argument("--replay", type=int, default=10, help="pool images yielded per new render")
    p.add_argument("--pool", type=int, default=3000, help="clean renders kept per worker")
    p.add_argument("--fresh-aug", type=float, default=0.4,
                   help="share of replays augmented afresh; the others reuse the item's last augmentation "
                        "(augmenting costs ~15 ms, the GPU wants more samples than the workers can augment)")
    p.add_argument("--warmup-steps", type=int, default=400, help="linear warmup whenever the optimizer is fresh")
    p.add_argument("--val", action="append", default=[], help="labelled folders to evaluate at the end")
    p.add_argument("--val-limit", type=int, default=300)
    p.add_argument("--renderer", default="pip", choices=["auto", "tex", "pip"])
    p.add_argument("--chunk", type=int, default=None,
                   help="formulas rendered together (default: 64 with --renderer tex, else 1)")
    p.add_argument("--pack", action="append", default=[],
                   help="train on this pre-rendered pack (scripts/pretrain_pack.py) instead of rendering on the "
                        "fly; repeat it to pool several")
    p.add_argument("--printed-aug", type=float, default=0.4, help="share of printed renders augmented")
    p.add_argument("--probe-every", type=int, default=4,
                   help="score the grounding probe every N logging intervals (grounding_probe)")
    p.add_argument("--real", action="append", default=[], metavar="KIND:PATH[:WEIGHT]",
                   help="real data mixed into the stream (texocr.data.realmix.RealPart.parse); repeat it")
    p.add_argument("--real-ratio", type=float, default=0.0, help="share of samples drawn from --real")
    p.add_argument("--no-batch-attention", action="store_true",
                   help="keep transformers' per-image vision attention (see batch_vision_attention)")
    return p.parse_known_args(argv)


# ------------------------------------------------------------------ data


def augment_by_style(img: Any, style: str, rng: random.Random, printed_aug: float) -> Any:
    """Both training streams' policy: handwriting-style renders always get texocr's augmentation (the
    distortion is what makes them handwriting-like), printed ones with probability `printed_aug`."""
    from texocr.data.augment import augment

    if style == "handwritten" or rng.random() < printed_aug:
        return augment(img, random.Random(rng.random()), style)
    return img


def make_stream(cfg: Any, *, printed_ratio: float, replay: int, pool: int, fresh_aug: float, offset: int,
                renderer: str, chunk: int = 1, printed_aug: float = 1.0, real: list[str] | None = None,
                real_ratio: float = 0.0) -> Any:
    """An IterableDataset of Samples: fresh renders interleaved with augmented replays of a per-worker pool.

    Handwriting-style renders are always augmented (the distortion is what makes them handwriting-like),
    printed ones with probability `printed_aug` (as `make_pack_stream`: test sets are clean renders, and
    augmenting costs ~15 ms of a core, three times a TeX render).

    Each worker renders chunks of `chunk` formulas at a time (one TeX document per chunk: TeX renders
    hundreds of formulas/s per core in batches, ~6/s one by one; the pip renderer gains nothing from
    chunks, use 1), each chunk in one style, font and resolution.

    With `real` parts (`texocr.data.realmix`), a share `real_ratio` of all samples are real images instead.
    """
    import torch

    from texocr.data.realmix import RealPart, real_samples
    from texocr.data.synth import SyntheticSource
    from texocr.sample import Sample, Skipped

    d = cfg.data
    sources = {style: SyntheticSource(n=2**40, seed=d.seed, style=style, renderer=renderer, formulas=d.formulas,
                                      real_ratio=d.real_formula_ratio, mutate_ratio=d.mutate_ratio, augment=False,
                                      chunk=chunk, cache_chunks=1, printed_dpis=d.printed_dpis)
               for style in ("printed", "handwritten")}

    class ReplayStream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
            rng = random.Random(f"replay:{d.seed}:{offset}:{wid}")
            kept: list[list[Any]] = []  # [clean grey render, target, style, id, last augmentation]
            c = offset + wid  # chunk number: workers take every nw-th chunk
            reals = real_samples([RealPart.parse(r) for r in real], random.Random(f"real:{offset}:{wid}")) \
                if real and real_ratio > 0 else None
            while True:
                style = "printed" if rng.random() < printed_ratio else "handwritten"
                fresh = [got for got in sources[style].render_chunk(c) if not isinstance(got, Skipped)]
                c += nw
                for got in fresh:
                    item = [got.image.convert("L"), got.latex, style, got.id, None]
                    if len(kept) < pool:
                        kept.append(item)
                    else:
                        kept[rng.randrange(pool)] = item
                    for it in [item] + [rng.choice(kept) for _ in range(replay)]:
                        while reals is not None and rng.random() < real_ratio:  # geometric: real_ratio of all
                            yield next(reals)
                        if it[4] is None or rng.random() < fresh_aug:
                            it[4] = augment_by_style(it[0].convert("RGB"), it[2], rng, printed_aug)
                        yield Sample(image=it[4], latex=it[1], id=it[3], meta={"style": it[2]})

    return ReplayStream()


def make_pack_stream(packs: list[str], *, seed: int, offset: int, printed_aug: float,
                     blur: tuple[float, float]) -> Any:
    """An IterableDataset of Samples drawn at random from TeX-rendered packs (`scripts/pretrain_pack.py`).

    Several packs are one pool (each image equally likely): a warm GPU machine keeps the packs that earlier
    commands carried (`scripts/pretrain_gpu.sh`), so the data can outgrow one call's 64 MiB.

    Each 1-bit render gets a Gaussian blur of radius in `blur` (anti-aliased edges like dvipng's), then the
    texocr augmentation of its style: always for handwriting-style renders (the handwriting distortion is
    what makes them handwriting-like), with probability `printed_aug` for printed ones (the im2latex test
    renders are clean, so most printed samples stay clean).
    """
    import gzip
    import io

    import torch
    from PIL import Image, ImageFilter

    from texocr.errors import TexocrError
    from texocr.sample import Sample

    rows: list[dict[str, Any]] = []  # each row gains "pack": the index of its pack.bin
    for n, folder in enumerate(map(Path, packs)):
        with gzip.open(folder / "index.jsonl.gz", "rt", encoding="utf-8") as f:
            got = [dict(json.loads(line), pack=n) for line in f if line.strip()]
        if not got:
            raise TexocrError(f"{folder}/index.jsonl.gz lists no images")
        rows += got

    class PackStream(torch.utils.data.IterableDataset):
        def __len__(self) -> int:
            return len(rows)

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            wid = info.id if info is not None else 0
            rng = random.Random(f"pack:{seed}:{offset}:{wid}")
            data = [(Path(folder) / "pack.bin").read_bytes() for folder in packs]
            while True:
                row = rows[rng.randrange(len(rows))]
                start = row["offset"]
                try:
                    img = Image.open(io.BytesIO(data[row["pack"]][start: start + row["length"]])).convert("L")
                except OSError as e:  # a damaged entry costs one sample, never the run
                    log.warning("pack %s image at byte %s unreadable: %s", packs[row["pack"]], start, e)
                    continue
                img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*blur))).convert("RGB")
                style = row.get("style", "printed")
                img = augment_by_style(img, style, rng, printed_aug)
                yield Sample(image=img, latex=row["latex"], id=f"pack{row['pack']}-{start}", meta={"style": style})

    return PackStream()


class WorkerSideCollate:
    """texocr's Collator plus what the training step would otherwise compute in the main process.

    The first H200 run was bound by the main process (GPU ~30% busy, no data wait). Qwen2-VL's M-RoPE position
    ids (`get_rope_index`, a Python loop over the rows: ~45 ms per batch of 128 on one CPU core) move into the
    DataLoader workers here, computed by transformers' own function. The workers' copy of the image processor
    stops after resizing and patchifying: `pixel_values` travel as uint8, a quarter of the fp32 bytes to pass
    between processes and to pin (it saves the worker itself only ~0.5-1 ms of ~7 ms per sample), and
    `PixelNormalizer` rescales and normalizes them on the GPU.
    """

    def __init__(self, collate: Any, model_config: Any) -> None:
        import copy
        import functools

        self.collate, self.model_config = collate, model_config
        # a copy: the model's own processor (evaluation, export) keeps normalizing
        self.collate.processor = copy.deepcopy(collate.processor)
        self.collate.processor.image_processor = ip = pil_image_processor(collate.processor.image_processor)
        ip.do_rescale = ip.do_normalize = False
        ip.patchify = functools.partial(uint8_patchify, ip)

    def __call__(self, samples: list[Any]) -> Any:
        import functools
        from types import SimpleNamespace

        import torch
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        batch = self.collate(samples)
        # get_rope_index reads only config.vision_config and get_vision_position_ids (which uses no state)
        core = SimpleNamespace(config=self.model_config)
        core.get_vision_position_ids = functools.partial(Qwen2VLModel.get_vision_position_ids, core)
        with torch.no_grad():
            batch["position_ids"], _ = Qwen2VLModel.get_rope_index(
                core, batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])  # [3, B, T]
        assert batch["pixel_values"].dtype == torch.uint8, "uint8_patchify was bypassed"
        return batch


def pil_image_processor(ip: Any) -> Any:
    """The PIL backend of a Qwen2-VL image processor with `ip`'s settings (`ip` itself if it is one).

    Where torchvision is installed (the GPU image) `AutoProcessor` picks the torchvision backend, whose
    patchify works on batched tensors; a laptop without torchvision runs the PIL one, so training on PIL
    resizes also matches what most users' inference will see.
    """
    from transformers import Qwen2VLImageProcessorPil

    if isinstance(ip, Qwen2VLImageProcessorPil):
        return ip
    keys = ("patch_size", "merge_size", "temporal_patch_size", "image_mean", "image_std", "rescale_factor",
            "min_pixels", "max_pixels")
    size = {k: v for k, v in dict(ip.size or {}).items() if k in ("shortest_edge", "longest_edge")}
    return Qwen2VLImageProcessorPil(size=size or None, **{k: getattr(ip, k) for k in keys if getattr(ip, k, None)})


def uint8_patchify(ip: Any, image: Any, patch_size: int, merge_size: int,
                   temporal_patch_size: int) -> tuple[Any, int, int]:
    """Qwen2-VL's `patchify` (the same reshape as transformers' `image_processing_pil_qwen2_vl`) kept in uint8.

    Transformers' version casts to float32 first: with rescaling and normalizing moved to the GPU, the
    resized image is still 0..255 uint8, and keeping it so makes the patch copy and the batch concatenation
    4x smaller (measured here on one core: collating a sample 7.8 -> 3.8 ms).
    """
    import numpy as np

    image = np.asarray(image)
    if image.dtype != np.uint8:  # a resize that returned floats: round back to the pixel grid
        image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    c, h, w = image.shape
    gh, gw = h // patch_size, w // patch_size
    p = image.reshape(c, gh // merge_size, merge_size, patch_size, gw // merge_size, merge_size, patch_size)
    p = p.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh, gw, mh, mw, C, ph, pw)
    p = np.broadcast_to(p[:, :, :, :, :, None], (*p.shape[:5], temporal_patch_size, *p.shape[5:]))
    return p.reshape(gh * gw, c * temporal_patch_size * patch_size * patch_size), gh, gw


class PixelNormalizer:
    """The image processor's rescale + normalize, on whatever device the uint8 patches are on.

    A patch row is laid out channel-major (`patchify`: C x T x 14 x 14), so each channel's mean and std
    repeat over a contiguous block of T * 14 * 14 values.
    """

    def __init__(self, image_processor: Any) -> None:
        import torch

        ip = image_processor
        block = ip.temporal_patch_size * ip.patch_size * ip.patch_size
        self.scale = float(ip.rescale_factor)
        self.mean = torch.tensor(ip.image_mean, dtype=torch.float32).repeat_interleave(block)  # [C * T * P * P]
        self.std = torch.tensor(ip.image_std, dtype=torch.float32).repeat_interleave(block)

    def __call__(self, pixels: Any) -> Any:
        import torch

        if self.mean.device != pixels.device:  # moved once, not every step
            self.mean, self.std = self.mean.to(pixels.device), self.std.to(pixels.device)
        return (pixels.to(torch.float32) * self.scale - self.mean) / self.std  # [patches, C * T * P * P]


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # 14 workers on 16 cores: no OpenMP oversubscription


# ------------------------------------------------------------------ speed


VISION_WIDTH: dict[str, int | None] = {"patches": None}
"""Most patches of one image in the current batch, set by the training loop from the CPU copy of
`image_grid_thw`, so the patched vision attention need not read it back from the GPU (one sync per layer)."""


def batch_vision_attention() -> None:
    """Make Qwen2-VL's vision attention one padded SDPA call per layer instead of one call per image.

    Without flash-attn, transformers' SDPA path splits the packed patches at `cu_seqlens` and calls attention
    once per image: at batch 128 that is ~900 small kernels per step, and the first GPU run measured the step
    CPU-bound (GPU ~30% busy, 290 samples/s). Here the images are scattered into a [B, L, H, D] block with a
    key mask, attended together, and gathered back: the same result (a test checks it), one kernel.
    """
    import torch
    import torch.nn.functional as F
    from transformers.models.qwen2_vl import modeling_qwen2_vl as m

    def forward(self: Any, hidden_states: Any, cu_seqlens: Any, position_embeddings: Any = None,
                **kwargs: Any) -> Any:
        n = hidden_states.shape[0]
        q, k, v = self.qkv(hidden_states).reshape(n, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = position_embeddings
        q, k = m.apply_rotary_pos_emb_vision(q, k, cos, sin)  # [N, H, D]
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]  # [B]
        b = lengths.shape[0]
        width = VISION_WIDTH["patches"] or int(lengths.max())  # the hint avoids a GPU -> CPU read per layer
        row = torch.repeat_interleave(torch.arange(b, device=q.device), lengths)  # [N]: image of each patch
        col = torch.arange(n, device=q.device) - torch.repeat_interleave(cu_seqlens[:-1], lengths)  # [N]

        def pad(t: Any) -> Any:
            out = t.new_zeros(b, width, *t.shape[1:])
            out[row, col] = t
            return out.transpose(1, 2)  # [B, H, L, D]

        keep = torch.arange(width, device=q.device)[None, :] < lengths[:, None]  # [B, L]
        o = F.scaled_dot_product_attention(pad(q), pad(k.to(q.dtype)), pad(v.to(q.dtype)),
                                           attn_mask=keep[:, None, None, :], scale=self.scaling)
        o = o.transpose(1, 2)[row, col]  # [N, H, D]
        return self.proj(o.reshape(n, -1))

    m.VisionAttention.forward = forward


# ------------------------------------------------------------------ schedule, state, export


def lr_at(peak: float, progress: float, step_in_command: int, warmup: int) -> float:
    """Cosine from `peak` to 5% of it over training time, times a linear warmup after each optimizer start."""
    cosine = 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return peak * cosine * min(1.0, (step_in_command + 1) / max(1, warmup))


def export_weights(model: Any, folder: Path) -> list[str]:
    """Save bf16 safetensors shards (<= 15 MB each) + index into `folder`; returns the file names."""
    import copy

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("model*.safetensors*"):
        old.unlink()
    half = copy.deepcopy(model).to(torch.bfloat16)
    half.save_pretrained(folder, max_shard_size="15MB")
    for extra in ("config.json", "generation_config.json"):  # unchanged from the init: keep $OUT's 8 files
        (folder / extra).unlink(missing_ok=True)
    return sorted(p.name for p in folder.iterdir())


def evaluate(loaded: Any, folders: list[str], limit: int) -> dict[str, dict[str, Any]]:
    """Greedy-decode up to `limit` images of each labelled folder; texocr's metrics per folder."""
    from texocr.data.sources import open_source
    from texocr.infer import Recognizer
    from texocr.metrics import compute_metrics

    loaded.model.eval()
    rec = Recognizer.from_loaded(loaded, batch_size=128, max_new_tokens=256)
    out = {}
    for folder in folders:
        samples = []
        for s in open_source(folder):
            samples.append(s)
            if len(samples) >= limit:
                break
        t0 = time.perf_counter()
        preds = rec([s.image for s in samples])
        m = compute_metrics(preds, [s.latex for s in samples])
        m["seconds"] = round(time.perf_counter() - t0, 1)
        m["examples"] = [{"ref": s.latex, "pred": p} for s, p in list(zip(samples, preds))[:3]]
        out[Path(folder).name] = m
        log.info("eval %s: %s", folder, {k: v for k, v in m.items() if k != "examples"})
    loaded.model.train()
    return out


def grounding_probe(samples: list[Any], collate: Any, normalize: Any, device: str) -> Any:
    """A closure measuring how much the model reads the image: loss with the right vs. another row's image.

    The same labels are scored twice, once with each row's own image and once with the next row's; a model
    that only learned the language of LaTeX scores both alike (the first H200 run: 1.79 vs 1.87 nats).
    Both batches are collated once, here, and kept on the device.
    """
    import torch

    from texocr.sample import Sample

    other = [Sample(image=samples[(i + 1) % len(samples)].image, latex=s.latex, id=s.id, meta=s.meta)
             for i, s in enumerate(samples)]
    batches = []
    for group in (samples, other):
        b = {k: v.to(device) if hasattr(v, "to") else v for k, v in collate(group).items()}
        b["pixel_values"] = normalize(b["pixel_values"])
        batches.append(b)

    def probe(model: Any) -> tuple[float, float]:
        was_training = model.training
        model.eval()
        with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            right, wrong = (round(float(model(**b).loss), 4) for b in batches)
        model.train(was_training)
        return right, wrong

    return probe


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    import torch

    from texocr.config import ModelConfig, load_config
    from texocr.data.collate import Collator
    from texocr.models.compact import build_compact, grow_compact
    from texocr.models.loading import load_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args, overrides = parse_args(argv)
    cfg = load_config(args.config, overrides)
    out = Path(args.out or cfg.train.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    export = Path(args.export) if args.export else out / "export"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(cfg.train.seed)
    if not args.no_batch_attention:
        batch_vision_attention()

    model_dir = Path(args.model) if args.model else out / "init"
    if not (model_dir / "config.json").is_file():
        log.info("building a random %s compact model in %s", args.size, model_dir)
        build_compact(model_dir, size=args.size, seed=cfg.train.seed)
    if args.grow:  # deterministic, so a resumed command rebuilds the same architecture before loading state.pt
        model_dir = grow_compact(model_dir, args.grow, out / f"grown-{args.grow}")
        log.info("grew %s into %s: %s", args.model or "the init", args.grow, model_dir)
    mcfg = ModelConfig(name_or_path=str(model_dir), family="compact", method="full", dtype="float32",
                       max_length=cfg.model.max_length)
    loaded = load_model(mcfg, training=True, device=device)
    model = loaded.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(0.9, 0.98),
                            weight_decay=cfg.train.weight_decay)
    state_path = out / "state.pt"
    step, done = 0, 0.0
    if state_path.is_file():  # same warm machine: full resume
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        step, done = state["step"], state["done_seconds"]
        log.info("resumed %s: step %d, %.0f s trained", state_path, step, done)
    done = args.done_seconds if args.done_seconds is not None else done
    fresh_opt = not state_path.is_file()
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s: %.2fM parameters on %s; step %d, %.0f of %.0f s done", model_dir, n_params / 1e6,
             device, step, done, args.budget_seconds)

    collate = WorkerSideCollate(Collator(loaded, cfg.model.max_length), model.config)
    normalize_pixels = PixelNormalizer(loaded.processor.image_processor)
    if args.pack:
        stream = make_pack_stream(args.pack, seed=cfg.data.seed, offset=int(done), printed_aug=args.printed_aug,
                                  blur=(0.35, 0.7))
        log.info("training on the packs %s: %d images", args.pack, len(stream))
    else:
        chunk = args.chunk or (64 if args.renderer == "tex" else 1)
        stream = make_stream(cfg, printed_ratio=args.printed_ratio, replay=args.replay, pool=args.pool,
                             fresh_aug=args.fresh_aug, offset=10_000_000 * (1 + int(done)) // chunk,
                             renderer=args.renderer, chunk=chunk, printed_aug=args.printed_aug,
                             real=args.real, real_ratio=args.real_ratio)
    probe_stream = iter(make_pack_stream(args.pack, seed=cfg.data.seed + 1, offset=-1, printed_aug=0.0,
                                         blur=(0.5, 0.5)) if args.pack else stream)
    probe = grounding_probe([next(probe_stream) for _ in range(64)], collate, normalize_pixels, device)
    workers = cfg.train.dataloader_workers
    loader = torch.utils.data.DataLoader(stream, batch_size=cfg.train.batch_size, collate_fn=collate,
                                         num_workers=workers, worker_init_fn=_worker_init if workers else None,
                                         prefetch_factor=8 if workers else None, pin_memory=device == "cuda")
    export.mkdir(parents=True, exist_ok=True)
    curve = open(export / "curve.csv", "a", newline="", encoding="utf-8")  # noqa: SIM115 -- open for the whole loop
    writer = csv.writer(curve)
    writer.writerow(["step", "train_seconds", "loss", "lr", "samples_per_s", "data_wait", "gpu_util",
                     "probe_loss", "probe_loss_other_image"])

    t_start = time.perf_counter()
    t_last_save = t_start
    window = {"loss": 0.0, "n": 0, "samples": 0, "wait": 0.0, "t": t_start}
    step_in_cmd = 0
    it = iter(loader)
    first_batch_s = None
    while True:
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        if first_batch_s is None:
            first_batch_s = t1 - t_start
            log.info("first batch after %.1f s", first_batch_s)
            t_start = t_last_save = window["t"] = t1  # the clock starts when data flows
        elapsed = time.perf_counter() - t_start
        if elapsed >= args.seconds:
            break
        lr = lr_at(cfg.train.lr, (done + elapsed) / args.budget_seconds, step_in_cmd,
                   args.warmup_steps if fresh_opt else 0)
        for g in opt.param_groups:
            g["lr"] = lr
        grid = batch["image_grid_thw"]  # [images, 3] on the CPU still: patches per image = t * h * w
        VISION_WIDTH["patches"] = int((grid[:, 1] * grid[:, 2]).max())
        batch = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
        batch["pixel_values"] = normalize_pixels(batch["pixel_values"])  # uint8 -> the processor's floats
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**batch).loss
        VISION_WIDTH["patches"] = None  # valid for this batch only (evaluation and export run without it)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        step_in_cmd += 1
        window["loss"] += loss.detach()  # a tensor: read back only when logged, so steps can overlap
        window["n"] += 1
        window["samples"] += int(batch["input_ids"].shape[0])
        window["wait"] += t1 - t0
        if step % cfg.train.logging_steps == 0:
            now = time.perf_counter()
            dt = now - window["t"]
            util = _gpu_util()
            probed = probe(model) if step % (cfg.train.logging_steps * args.probe_every) == 0 else ("", "")
            row = [step, round(done + now - t_start, 1), round(float(window["loss"]) / window["n"], 4), f"{lr:.2e}",
                   round(window["samples"] / dt, 1), round(window["wait"] / dt, 3), util, *probed]
            writer.writerow(row)
            curve.flush()
            log.info("step %d  t %.0fs  loss %.4f  lr %s  %.0f samples/s  data wait %.0f%%  gpu %s%%  probe %s / %s",
                     *row[:5], 100 * row[5], util, *probed)
            now = time.perf_counter()  # the probe's time is not training throughput
            window = {"loss": 0.0, "n": 0, "samples": 0, "wait": 0.0, "t": now}
        if time.perf_counter() - t_last_save > args.save_every:
            export_weights(model, export)
            t_last_save = time.perf_counter()
    trained = time.perf_counter() - t_start
    done += trained
    del it
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step, "done_seconds": done},
               state_path)
    files = export_weights(model, export)
    metrics = {"step": step, "done_seconds": round(done, 1), "command_train_seconds": round(trained, 1),
               "command_steps": step_in_cmd, "samples_per_s": round(step_in_cmd * cfg.train.batch_size / trained, 1),
               "first_batch_seconds": round(first_batch_s or 0.0, 1), "params": n_params, "lr_final": lr_at(
                   cfg.train.lr, done / args.budget_seconds, step_in_cmd, 0)}
    tok_file = model_dir / "tokenizer.json"
    if tok_file.is_file():  # the machine that assembles the model checks its own tokenizer against this
        import hashlib

        metrics["tokenizer_sha256"] = hashlib.sha256(tok_file.read_bytes()).hexdigest()
    (export / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    if args.val:  # after the weights and training numbers are written: a failing evaluation loses neither
        try:
            metrics["eval"] = evaluate(loaded, args.val, args.val_limit)
        except Exception as e:
            log.exception("evaluation failed")
            metrics["eval_error"] = f"{type(e).__name__}: {e}"
        (export / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    curve.close()
    print(f"compact pretraining: step {step}, {done:.0f} s trained; exported {files} to {export}")
    return 0


def _gpu_util() -> int | None:
    try:
        import torch

        return int(torch.cuda.utilization()) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 -- pynvml missing or unsupported: the number is informative only
        return None


if __name__ == "__main__":
    sys.exit(main())
