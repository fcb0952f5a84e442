"""Load a model of any family, prepared for inference or for full / LoRA / QLoRA training.

    loaded = load_model(ModelConfig(name_or_path="Qwen/Qwen2-VL-2B-Instruct", method="lora"), training=True)
    loaded.model, loaded.processor, loaded.family
    print(trainable_parameters(loaded.model))

LoRA, QLoRA and full training share one path; they differ only in how the model is prepared here.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from texocr.errors import TexocrError
from texocr.models.registry import detect_family

if TYPE_CHECKING:
    import torch

    from texocr.config import ModelConfig
    from texocr.models.base import Family

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Any
    """A transformers model: a `PeftModel` when LoRA is attached for training (or to a 4-bit base); for
    inference an adapter is merged into the weights (`adapter` then names it)."""
    processor: Any
    family: Family
    device: str = "cpu"
    adapter: str | None = None
    """The LoRA adapter loaded with the base, if any."""

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def resolve_device(device: str | None) -> str:
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise TexocrError(f"device {device!r} requested but no CUDA GPU is available")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str, stored: str | None = None) -> torch.dtype:
    """`auto`: bfloat16 on a CUDA GPU that supports it, float16 on an older GPU; on a CPU float32, except for
    weights `stored` in bfloat16 on a CPU that computes in bfloat16 natively (`cpu_computes_bf16`): there they stay
    bfloat16. `load_model` passes `stored` only to read (no training, no adapter to fold in, whose small deltas
    bfloat16 would round away). Why: on texocr's 2-core AVX512-BF16 machine the shipped model reads published
    im2latex images 1.48x faster at batch 32 in bfloat16, 46.8 % exact against 46.9 % (bench/compact.md)."""
    import torch

    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device == "cpu" and stored == "bfloat16" and cpu_computes_bf16():
            return torch.bfloat16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX). Elsewhere torch emulates it,
    slower than float32."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and bool(check()) for check in checks)


def stored_dtype(path: str) -> str | None:
    """The dtype a local model folder's config.json says its weights are stored in (None: unknown)."""
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dtype = (cfg.get("dtype") or cfg.get("torch_dtype")) if isinstance(cfg, dict) else None
    return dtype if isinstance(dtype, str) else None


def quantization_config(cfg: ModelConfig, device: str) -> Any:
    """bitsandbytes config for QLoRA (NF4 + double quant + bf16 compute, or int8); clear errors otherwise."""
    import torch

    if not device.startswith("cuda"):
        raise TexocrError(
            "QLoRA needs a CUDA GPU (bitsandbytes 4/8-bit kernels); this machine has none. "
            "Use model.method=lora (or full) here."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise TexocrError("QLoRA needs bitsandbytes: pip install 'texocr[quant]' (or use model.method=lora)")
    from transformers import BitsAndBytesConfig

    if cfg.quant_bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _adapter_base(path: str) -> str | None:
    """The base model recorded by a peft adapter directory, if `path` is one."""
    cfg = Path(path) / "adapter_config.json"
    if cfg.is_file() and not (Path(path) / "config.json").is_file():
        return json.loads(cfg.read_text()).get("base_model_name_or_path")
    return None


def _has_processor(folder: str) -> bool:
    return any((Path(folder) / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))


def _from_pretrained(cls: type, path: str, **kwargs: Any) -> Any:
    try:
        return cls.from_pretrained(path, **kwargs)
    except ValueError as e:
        # Some text towers refuse SDPA (Gemma 2 soft-caps its logits, so PaliGemma 2 cannot use
        # SDPA from transformers 5.2x on). With no explicit choice, fall back to eager attention.
        if "attn_implementation" in kwargs or "does not support an attention implementation" not in str(e):
            raise
        log.info("%s: SDPA not supported by this architecture, using eager attention", path)
        return _from_pretrained(cls, path, attn_implementation="eager", **kwargs)
    except OSError as e:
        where = "local directory" if Path(path).exists() else "hub id (no network, or not downloaded yet?)"
        raise TexocrError(f"cannot load model {path!r} ({where}): {str(e).splitlines()[0]}") from None


DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "default-model"
"""texocr's own compact model, shipped as package data (its model card: README.md there)."""


def looks_like_path(name: str) -> bool:
    """True when `name` can only be a local path: a hub id is `name` or `owner/name`, never `/x`, `./x`,
    `~/x`, `C:\\x` or `a/b/c`."""
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or name.endswith("/")


def resolve_model(name: str) -> str:
    """The path or hub id that a model name means; `default` is texocr's shipped compact model.

    A name that can only be a local path must be an existing folder: "no such directory" is then the error,
    not a later failure to guess the family of a model that is not there."""
    if name != "default":
        if looks_like_path(name) or Path(name).exists():
            path = Path(name).expanduser()
            if not path.exists():
                raise TexocrError(f"model {name!r}: no such directory: {path.absolute()}")
            if not path.is_dir():
                raise TexocrError(f"model {name!r}: not a directory (a model is a folder with config.json)")
            return str(path)
        return name
    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return str(DEFAULT_MODEL_DIR)
    raise TexocrError(f"texocr's default model is missing from {DEFAULT_MODEL_DIR} (a damaged install?); "
                      "pass --model with a local model directory or a hub id")


def load_model(cfg: ModelConfig, *, training: bool = False, device: str | None = None) -> LoadedModel:
    """Load model + processor for `cfg` and prepare it (see the module docstring)."""
    path, adapter = resolve_model(cfg.name_or_path), cfg.adapter
    base = _adapter_base(path)
    if base is not None:  # `--model ADAPTER_DIR` means its base + that adapter
        path, adapter = base, adapter or cfg.name_or_path
    try:
        family = detect_family(path, cfg.family)
    except TexocrError as e:  # `owner/name` that is neither a known hub id nor a folder here: say both
        if Path(path).exists():
            raise
        raise TexocrError(f"{e}; nor is it a directory here (no such directory: {Path(path).absolute()})") from None
    device = resolve_device(device)
    stored = None if training or adapter else stored_dtype(path)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(cfg.dtype, device, stored)}
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    quantized = cfg.method == "qlora"
    if quantized:
        kwargs["quantization_config"] = quantization_config(cfg, device)
        kwargs["device_map"] = {"": device}
    model = _from_pretrained(family.model_class(), path, **kwargs)
    # a LoRA run saves its processor beside the adapter: the image budget it trained with, not the base's
    processor = family.build_processor(adapter if adapter and _has_processor(adapter) else path, cfg)
    if not quantized:
        model.to(device)

    if training:
        model = prepare_for_training(model, family, cfg, adapter)
    else:
        if adapter:
            model = _load_adapter(model, adapter, trainable=False)
            if not quantized:  # inference: fold LoRA into the weights (the same outputs, no adapter overhead,
                model = merge_adapter(model)  # and the family's fast greedy loop sees a plain model)
        model.eval()
    return LoadedModel(model=model, processor=processor, family=family, device=device, adapter=adapter)


def merge_adapter(model: Any) -> Any:
    """A PeftModel -> its base with every LoRA delta added into the weights (a plain transformers model)."""
    merged = model.merge_and_unload()
    left = [n for n, _ in merged.named_modules() if "lora_" in n.rsplit(".", 1)[-1]]
    if left:  # pragma: no cover - peft merges every LoRA layer it created
        raise TexocrError(f"merge left {len(left)} LoRA modules behind, e.g. {left[0]}")
    return merged


def _load_adapter(model: Any, adapter: str, *, trainable: bool) -> Any:
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise TexocrError(f"adapter {adapter!r}: no adapter_config.json there")
    return PeftModel.from_pretrained(model, adapter, is_trainable=trainable)


def _submodule(model: Any, dotted: str) -> Any:
    mod = model
    for part in dotted.split("."):
        mod = getattr(mod, part, None)
        if mod is None:
            return None
    return mod


def _freeze(model: Any, dotted: str, what: str) -> None:
    mod = _submodule(model, dotted)
    if mod is None:
        raise TexocrError(f"cannot freeze the {what}: this model has no module {dotted!r}")
    for p in mod.parameters():
        p.requires_grad_(False)


def prepare_for_training(model: Any, family: Family, cfg: ModelConfig, adapter: str | None) -> Any:
    """Full: unfreeze all but the frozen towers. LoRA/QLoRA: attach (or load) trainable adapters."""
    if cfg.method == "qlora" and cfg.qlora_fp32_upcast:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg.method == "qlora":  # prepare_model_for_kbit_training without its float32 copies (model.qlora_fp32_upcast)
        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    if cfg.method == "full":
        if adapter:  # continue from a LoRA run: fold its weights in, then train everything
            model = _load_adapter(model, adapter, trainable=False).merge_and_unload()
        for p in model.parameters():
            p.requires_grad_(True)
        if cfg.freeze_vision:
            _freeze(model, family.vision_module, "vision tower")
        if cfg.freeze_language:
            _freeze(model, family.language_module, "language model")
    else:
        if adapter:
            model = _load_adapter(model, adapter, trainable=True)
        else:
            model = attach_lora(model, family, cfg)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # inputs of checkpointed blocks need grads when the base is frozen
    if cfg.vision_no_grad:
        vision_without_grad(model, family)
    model.config.use_cache = False  # the KV cache is useless (and warns) during training
    model.train()
    return model


def vision_without_grad(model: Any, family: Family) -> bool:
    """Run a frozen vision tower under `torch.no_grad` (`model.vision_no_grad`); False (and nothing changed) when
    the model has no vision tower or some of its parameters train (LoRA on it, or full fine-tuning).

    Why: `enable_input_require_grads` hooks every input embedding of the model, the tower's patch embedding too,
    so a frozen tower's output requires grad; under gradient checkpointing its blocks are then recomputed and
    back-propagated through for nothing (on the Qwen2-VL-7B shape at batch 32: 8,192 patches x 32 blocks)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    vision = _submodule(base, family.vision_module) if family.vision_module else None
    if vision is None or any(p.requires_grad for p in vision.parameters()):
        return False
    forward = vision.forward

    @functools.wraps(forward)
    def no_grad_forward(*args: Any, **kwargs: Any) -> Any:
        with torch.no_grad():
            return forward(*args, **kwargs)

    vision.forward = no_grad_forward
    return True


def attach_lora(model: Any, family: Family, cfg: ModelConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    targets = cfg.lora_target_modules or family.lora_targets(cfg.lora_scope)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, lora)
    except ValueError as e:
        raise TexocrError(f"LoRA targets {targets!r} do not match this model: {e}") from None


def trainable_parameters(model: Any) -> dict[str, Any]:
    """`{"trainable": n, "total": n, "percent": x, "summary": "..."}` over unique parameters."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if hasattr(p, "quant_storage") or p.__class__.__name__ == "Params4bit":
            n *= 2  # 4-bit weights pack two values per byte element
        total += n
        if p.requires_grad:
            trainable += n
    pct = 100.0 * trainable / max(total, 1)
    return {
        "trainable": trainable,
        "total": total,
        "percent": pct,
        "summary": f"trainable params: {trainable:,} of {total:,} ({pct:.2f}%)",
    }
