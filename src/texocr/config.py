"""Typed configuration: dataclasses per stage, YAML loading, dotted command-line overrides.

    cfg = load_config("configs/tiny/cpu-lora.yaml", overrides=["--train.lr", "1e-4"])
    save_config(cfg, "runs/x/config.yaml")

An unknown key or a value of the wrong type raises `ConfigError` naming the key and the valid choices.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from texocr.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE


class ConfigError(ValueError):
    """A configuration file or override that does not fit the schema."""


@dataclass
class ModelConfig:
    name_or_path: str = "default"
    """`default` (texocr's shipped compact model), a local directory, or a hub id."""
    family: str | None = None
    """Model family from the registry; detected from the checkpoint's config.json when unset."""
    adapter: str | None = None
    """A LoRA adapter directory to load on top of the model."""
    method: Literal["lora", "qlora", "full"] = "lora"
    """How the model is prepared for training: LoRA, QLoRA (4/8-bit base + LoRA) or full fine-tuning."""
    quant_bits: Literal[4, 8] = 4
    """Bits of the quantized base for QLoRA (NF4 or int8 through bitsandbytes)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype; `auto` picks bfloat16 on a GPU that supports it, float32 on a CPU."""
    attn_implementation: str | None = None
    """Attention kernel (`sdpa`, `eager`, `flash_attention_2`); unset picks SDPA where the architecture
    supports it and eager attention where it does not (Gemma 2 in PaliGemma 2)."""
    lora_r: int = 16
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_scope: Literal["language", "vision_language"] = "language"
    """Which towers get LoRA adapters."""
    lora_target_modules: list[str] | None = None
    """Explicit module names; overrides the family's defaults for `lora_scope`."""
    gradient_checkpointing: bool = False
    freeze_vision: bool = False
    freeze_language: bool = False
    min_pixels: int | None = None
    """Lower bound of the image budget in pixels (dynamic-resolution families); family default when unset."""
    max_pixels: int | None = None
    """Upper bound of the image budget: keeps a formula from becoming thousands of tokens."""
    max_length: int = 1024
    """Longest training sequence (prompt + image tokens + answer); longer samples are dropped, never truncated."""
    init_size: str | None = None
    """Start from a fresh random compact model of this size (`texocr.models.compact.SIZES`) built in
    `<output_dir>/init`, instead of loading `name_or_path` (pretraining from scratch)."""
    grow: str | None = None
    """Deepen the compact model to this larger size first (`grow_compact`: new layers start as identities)."""
    batch_vision_attention: bool = True
    """Qwen2-VL-style vision towers (compact, Qwen2-VL): one padded attention call per layer for the whole batch
    instead of one per image (`texocr.models.vision_attention`). Same result; off to use transformers' own."""
    qlora_fp32_upcast: bool = False
    """QLoRA: PEFT's `prepare_model_for_kbit_training` casts every weight that is not 4-bit (embeddings, LM head,
    norms, biases, unquantized vision parts) to float32: for Qwen2-VL-7B ~2.2 GB more for the embedding and the
    head alone, each cast back to bf16 by autocast at every use. They are frozen, so texocr keeps them in the
    compute dtype; on to get PEFT's preparation (e.g. for fp16 training of a model with trainable norms)."""
    vision_no_grad: bool = True
    """Training with a frozen vision tower (LoRA on the language model, or `freeze_vision`): run the tower under
    `torch.no_grad`. Without it, the input-gradient hooks that gradient checkpointing needs make the tower's output
    require grad, so autograd records it, checkpointing recomputes it and the backward pass runs through it only to
    reach weights that do not train. The same loss and gradients; off to compare."""


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=list)
    """Training sources: a local folder (labels.jsonl / CSV / .lst), an InkML folder, `hf:<id>`, a preset
    name (`unsloth/LaTeX_OCR`, ...), or `synthetic` (rendered on the fly)."""
    val: list[str] = field(default_factory=list)
    """Validation sources, same forms as `train`."""
    split: str = "train"
    val_split: str = "test"
    image_column: str | None = None
    text_column: str | None = None
    subset: str | None = None
    """Hugging Face config name (e.g. `human_handwrite` of linxy/LaTeX_OCR); also `SPEC#subset`."""
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    """Images declaring more pixels are skipped as decompression bombs (checked before decoding)."""
    max_image_side: int = DEFAULT_MAX_SIDE
    """Longer image sides are downscaled to this."""
    ink_height: int = 128
    """Height in pixels of rasterized InkML strokes."""
    ink_pen_width: float = 2.5
    streaming: bool = False
    """Train on a stream (`texocr.data.stream`) instead of reading every sample into memory first: endless for
    `synthetic` and `real` parts, epoch after epoch (shuffled in a buffer) for folders and hub data sets."""
    shuffle_buffer: int = 1000
    """Samples a stream shuffles among (streaming only)."""
    replay: int = 0
    """Streaming `synthetic`: pool images yielded per new render, each augmented afresh (0: none). Rendering is
    slower than a small model trains; replaying a per-worker pool of clean renders keeps the GPU busy."""
    replay_pool: int = 3000
    """Clean renders each DataLoader worker keeps for `replay`."""
    replay_fresh_aug: float = 0.4
    """Share of replays augmented afresh; the others reuse the item's last augmentation."""
    printed_aug: float = 0.4
    """Streaming `synthetic`: share of printed renders augmented (handwriting-style renders always are)."""
    renderer: Literal["auto", "tex", "pip"] = "auto"
    """Renderer of `synthetic` data."""
    render_chunk: int | None = None
    """Formulas rendered together in one TeX document (default: 64 with TeX, 1 with the pip renderer)."""
    real: list[str] = field(default_factory=list)
    """Real data mixed into a stream, `KIND:PATH[:WEIGHT]` each (`texocr.data.realmix`; KIND printed,
    handwritten or ink)."""
    real_ratio: float = 0.0
    """Share of the stream's samples drawn from `real`."""
    collate_in_workers: bool = True
    """Qwen2-VL models with `train.dataloader_workers > 0`: DataLoader workers also compute M-RoPE positions and
    keep pixels uint8 (normalized on the GPU) (`texocr.models.qwen_speed`). Same batches; off for the plain path."""
    limit: int | None = None
    """Use at most this many training samples."""
    val_limit: int | None = 64
    synthetic_n: int = 2000
    """Samples per epoch when a source is `synthetic`."""
    synthetic_style: Literal["printed", "handwritten", "mixed"] = "printed"
    printed_ratio: float = 0.75
    """Share of printed renders when `synthetic_style` is `mixed`."""
    downsample_share: float = 0.25
    """Share of printed synthetic chunks drawn the way the published im2latex-100k images were made (10 pt at
    2x the resolution, bucket padding, halved: `texocr.data.augment.im2markup`; bench/render_realism.md)."""
    downsample_aug: float = 0.0
    """Streaming `synthetic`: share of those im2markup-style renders also given `printed_aug`'s augmentation
    (their look is the point; run 9 used the printed share, 0.25)."""
    formulas: str | None = None
    """A file of real formulas (one per line or labels.jsonl) mixed into synthetic data."""
    real_formula_ratio: float = 0.5
    mutate_ratio: float = 0.0
    """Share of the real formulas replaced by a mutation of them (`texocr.data.mutate`)."""
    printed_dpis: list[int] | None = None
    """Resolutions printed synthetic chunks draw from (default `texocr.data.synth.PRINTED_DPIS`)."""
    augment: bool = True
    augment_strength: float = 1.0
    glyph_height: float | None = None
    """Training images whose glyphs are smaller than this many pixels are enlarged as the Recognizer enlarges
    them when it reads (`texocr.data.images.rescale_to_glyph_height`), in the collator: the model trains on what
    it will see. None: `eval.glyph_height`, else the starting model's own setting (its `texocr_options.json`);
    0: off. The value used is written to the run's config (`eval.glyph_height` too, when that is unset)."""
    glyph_jitter: float = 0.0
    """Relative spread of that target per image (0.1: uniform in +-10 %), so a model reads well a little
    either side of its setting."""
    """Synthetic augmentation strength, 0-2 (`texocr.data.augment`; above 1: a messier handwriting)."""
    seed: int = 0
    num_workers: int = 0


@dataclass
class TrainConfig:
    output_dir: str = "runs/train"
    epochs: float = 1.0
    max_steps: int = -1
    """Stop after this many optimizer steps (overrides `epochs` when > 0)."""
    max_minutes: float = 0.0
    """Also stop after this many minutes of training wall time (0: no limit)."""
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    """Warm-up as a share of the steps (below 1) or a number of steps (1 and above)."""
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_time"] = "linear"
    """`cosine_time`: a cosine over `budget_minutes` of training wall time (kept across resumes), for runs
    bounded by time on machines that come and go, where the number of steps is known only once running."""
    budget_minutes: float = 0.0
    """Planned training minutes of all commands together (`cosine_time`)."""
    min_lr_ratio: float = 0.05
    """`cosine_time` ends at this share of `lr`."""
    adam_beta2: float = 0.999
    precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    max_grad_norm: float = 1.0
    seed: int = 0
    logging_steps: int = 10
    eval_steps: int = 0
    """Generate on the validation subset every N steps and report exact match (0: only at the end)."""
    save_steps: int = 0
    """Write a checkpoint every N steps (0: only at the end)."""
    save_total_limit: int | None = 2
    early_stopping_patience: int = 0
    """Stop after this many evaluations without improvement in exact match (0: never)."""
    resume: str | None = None
    """`latest` or a checkpoint directory to resume from."""
    optim: str = "adamw_torch"
    dataloader_workers: int = 0
    answer_loss: bool = True
    """Compute the loss from the last hidden states at answer positions only, with a chunked linear cross-entropy
    that never holds [tokens, vocab] logits (`texocr.answer_loss`): the same loss and gradients, without the
    logits' activation memory (gigabytes with a 152k vocabulary). Off: the model's own loss over logits at every
    position. Used where the model's head is a plain linear layer and the weights are not sharded (not FSDP /
    DeepSpeed ZeRO-3)."""
    lora_autocast_inputs: bool = True
    """Under bf16/fp16 autocast, LoRA adapters take the activations as they come. PEFT first copies every adapter
    input to the adapters' float32 (e.g. [tokens, 18944] before each down projection), and autocast then casts it
    back to bf16 for the matmul: the same numbers, two full-size copies per adapter and their backward. Off: PEFT's
    behaviour. No effect without autocast (`train.precision: no`)."""
    fused_lora: bool = True
    """LoRA layers add their adapter inside one GEMM (`addmm(base_out, x A^T, B^T, alpha=scaling)`) instead of
    PEFT's matmul, scale and add over the whole output (`texocr.fast_train.fuse_lora`). Plain LoRA only (no dropout,
    DoRA or adapter bias; those layers keep PEFT's forward). Off: PEFT's forward everywhere."""
    liger_kernels: bool = True
    """On a CUDA GPU with liger-kernel installed (`pip install texocr[gpu]`): Liger's fused RMSNorm and SwiGLU for
    this model's Qwen2/Llama-style norms and MLPs (`texocr.fast_train.liger_kernels`). The same function in fewer
    passes; bf16 results differ within rounding. Off to compare, or for a model Liger gets wrong."""
    padding_free: bool = True
    """Qwen2-VL and Qwen2.5-VL models (and texocr's compact model) with SDPA attention: a batch's rows are laid end
    to end in one sequence, each with its own 3-D rotary positions, and attention stays inside each row (Flash Attention's
    variable-length kernel on a GPU, one SDPA call per row elsewhere): no matrix product, norm or activation is
    computed or kept for padding (`texocr.models.packing`). The same loss and gradients as the padded batch.
    Off: rows padded to the longest of the batch."""
    offload_checkpoints: bool = True
    """With `model.gradient_checkpointing` on a CUDA GPU: the layer inputs checkpointing keeps live in pinned host
    memory during the step (`texocr.fast_train.offloaded_checkpoints`), saving [tokens, hidden] per layer of GPU
    memory for a copy each way. Off when GPU memory is plentiful and the copies cost more than they save."""
    method: Literal["sft", "grpo"] = "sft"
    """`sft`: supervised training on the labels (the Trainer). `grpo`: reinforcement fine-tuning from a reward
    (`texocr.grpo`): sample `grpo_generations` answers per image, score them against the label
    (`reward_parts`), push up the better ones of each group. Same output layout."""
    grpo_generations: int = 8
    """GRPO: answers sampled per image (the group whose rewards are compared); `batch_size` images a step."""
    grpo_temperature: float = 1.0
    """GRPO: sampling temperature (the loss uses the same temperature, so it is the sampled policy's gradient)."""
    grpo_max_new_tokens: int | None = None
    """GRPO: longest sampled answer in tokens (unset: `eval.max_new_tokens`)."""
    grpo_beta: float = 0.0
    """GRPO: weight of the KL penalty to the starting model (0: none, and no reference model is kept)."""
    grpo_scale_rewards: bool = True
    """GRPO: divide each group's advantages by its reward standard deviation (off: only subtract the mean)."""
    grpo_micro_batch: int = 0
    """GRPO: sequences per forward/backward pass (0: all `batch_size x grpo_generations` at once); lower it when
    the loss pass runs out of memory. The same update either way."""
    grpo_sample_batch: int = 0
    """GRPO: sequences per generate call when sampling the answers (0: all `batch_size x grpo_generations` at
    once); lower it only when sampling itself runs out of memory (its KV cache)."""
    grpo_flat_groups: Literal["count", "drop"] = "drop"
    """GRPO: what the loss does with groups whose answers all scored the same (no advantage, so no gradient):
    `drop` normalizes the loss over the sampled tokens of the groups with spread only (DAPO's filter, without its
    resampling), so a step's gradient is not diluted by the groups that teach nothing; `count` divides by every
    sampled token of the step. Without a KL term (`grpo_beta: 0`) that is the only difference; with one, `count`."""
    reward_parts: list[str] = field(default_factory=lambda: ["image:1.0", "valid:0.25", "edit:0.5", "length:0.25"])
    """GRPO: the reward, `NAME[:WEIGHT]` each (`texocr.rewards`): `image` (the prediction's rendering matches the
    label's: ink IoU), `valid` (valid LaTeX), `edit` (token edit score), `length` (penalty for excess tokens)."""
    reward_renderer: Literal["auto", "tex", "pip"] = "auto"
    """GRPO: renderer of the `image` reward part."""
    reward_timeout_s: float = 5.0
    """GRPO: seconds one formula may take to render for the `image` reward part; slower ones score 0."""
    reward_workers: int = 0
    """GRPO: render threads for the `image` reward part (0: one per CPU core, at most 8)."""


@dataclass
class EvalConfig:
    batch_size: int = 16
    max_new_tokens: int = 256
    num_beams: int = 1
    limit: int | None = None
    render: bool = True
    """Render predictions for `image_match` and the HTML report when a renderer is installed."""
    glyph_height: float | None = None
    """Enlarge inputs whose glyphs are smaller than this many pixels (`Recognizer(glyph_height=)`)."""
    reread: list[float] | None = None
    """Read an unsure input again with its glyphs at each of these heights and keep the surest read
    (`Recognizer(reread=)`); None: the model's own setting, [] or [0]: off."""
    reread_below: float | None = None
    """What "unsure" means for `reread`: a mean log-probability per token below this (e.g. -0.01)."""


@dataclass
class ServeConfig:
    """`texocr serve`: where it listens, how it batches, what it accepts (each key is also a flag)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    """Most images in one model call: concurrent requests are gathered up to this (1: no batching)."""
    batch_wait_ms: float = 5.0
    """How long the first queued image waits for others before its batch starts."""
    max_queue: int = 64
    """Images queued or running at once; a request that would exceed it is answered 503 with Retry-After."""
    max_images: int = 16
    """Images in one request."""
    max_image_bytes: int = 10_000_000
    """Bytes of one image file (as uploaded, or once decoded from base64)."""
    max_image_pixels: int = 16_000_000
    """An image whose header declares more pixels is refused before it is decoded (decompression bombs)."""
    max_request_bytes: int = 32_000_000
    """Bytes of one request body, all images and encoding included."""
    request_timeout_s: float = 60.0
    """A request still waiting for the model after this long is answered 503."""
    api_key_file: str | None = None
    """A file of API keys, one per line: `/v1/` then needs `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    max_new_tokens: int = 256
    glyph_height: float | None = None
    """Enlarge inputs whose glyphs are smaller than this many pixels (`Recognizer(glyph_height=)`)."""
    device: str | None = None
    """cuda, mps or cpu (unset: the best available)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


# ---------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single value where a list is expected: `--data.train DIR`
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--model.name_or_path 7` is still a path
    else:  # pragma: no cover - schema uses only the types above
        raise ConfigError(f"{key}: unsupported annotation {tp!r}")
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key {full!r}; valid keys: {', '.join(prefix + n for n in names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a nested mapping (as read from YAML) into a `Config`."""
    return _build(Config, data or {}, "")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`["--train.lr", "1e-4", "--model.method=full"]` -> `{"train": {"lr": 1e-4}, "model": {"method": "full"}}`.

    Values are parsed as YAML scalars (so `1e-4`, `true`, `null`, `[a, b]` work).
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg.split("=", 1)[0]:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key VALUE")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override {arg} has no value")
            key, raw = arg[2:], args[i + 1]
            i += 2
        key = key.replace("-", "_")
        value = yaml.safe_load(raw) if raw != "" else ""
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return data or {}


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply dotted overrides."""
    data = _read_yaml(path) if path else {}
    if overrides:
        data = _merge(data, parse_overrides(overrides))
    return config_from_dict(data)


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config; loading it back gives an equal `Config`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
