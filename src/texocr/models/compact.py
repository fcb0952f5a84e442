"""texocr's own compact image->LaTeX model: a small Qwen2-VL trained from scratch.

    path = build_compact("runs/compact-init", size="base")     # random weights + processor + LaTeX tokenizer
    loaded = load_model(ModelConfig(name_or_path=str(path)))    # the same code path as Qwen2-VL-7B

Why a Qwen2-VL shape (see bench/compact.md for the measured alternatives): the compact model is then
*literally* a `Qwen2VLForConditionalGeneration`, so loading, the collator's label mask, generation, LoRA
targets and the training loop are the Qwen2-VL family's, and "LoRA of the default model" is LoRA of a VLM.
What differs from a stock Qwen2-VL checkpoint is saved inside the checkpoint itself:
  - the tokenizer: `latex_tokenizer.build_latex_tokenizer` (about 1,300 ids: LaTeX tokens + characters);
  - the prompt, as the processor's chat template: no chat turns, no instruction, only
    `<|vision_start|><|image_pad|>*n<|vision_end|>` followed by the LaTeX and `<|im_end|>`;
so a compact checkpoint detected as plain `qwen2_vl` (from its config.json) still gets this prompt.
Sizes: decoding on a CPU is memory-bound (each new token reads all text-tower weights), so capacity goes to
the vision tower, which runs once per image; the text tower stays at 3-4 layers of width 256. A trained model
grows deeper with `grow_compact` (new layers start as identities).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from texocr.models.qwen_vl import QWEN_SPECIALS, Qwen2VL

COMPACT_TEMPLATE = (
    "{% for message in messages %}{% if message['content'] is not string %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% endif %}{% endfor %}{% endif %}{% endfor %}"
)
"""Only the image: the compact model has one task, so an instruction would be dead weight in every sequence."""

PROMPT = "<|vision_start|><|image_pad|><|vision_end|>"
EOS = "<|im_end|>"
PAD = "<|endoftext|>"

SIZES: dict[str, dict[str, int]] = {
    # vision: depth, width, heads (patch 14, 2x2 merge -> one text token per 28x28 pixels)
    # text: layers, width, heads, kv heads (GQA), MLP width
    "base": {"vis_depth": 7, "vis_dim": 320, "vis_heads": 5,
             "layers": 4, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 1024},
    # lighter candidates for the CPU targets (bench/compact.md): fewer/narrower vision layers, fewer text layers
    "small": {"vis_depth": 5, "vis_dim": 256, "vis_heads": 4,
              "layers": 3, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 1024},
    # deeper versions of `small` (same widths): `grow_compact` turns a trained `small` into one
    "small-v7": {"vis_depth": 7, "vis_dim": 256, "vis_heads": 4,
                 "layers": 3, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 1024},
    "small-t4": {"vis_depth": 5, "vis_dim": 256, "vis_heads": 4,
                 "layers": 4, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 1024},
    "xsmall": {"vis_depth": 4, "vis_dim": 192, "vis_heads": 3,
               "layers": 2, "hidden": 256, "heads": 4, "kv_heads": 2, "ffn": 1024},
    "tiny": {"vis_depth": 1, "vis_dim": 32, "vis_heads": 2,
             "layers": 1, "hidden": 64, "heads": 2, "kv_heads": 1, "ffn": 128},
}
"""`base` (~15.3M parameters, ~31 MB in bf16) is what the first pretraining run trained; `small` (8.9M) is what
pretraining builds by default now (bench/compact.md: `base` misses the CPU speed targets); `tiny` is for tests."""


class Compact(Qwen2VL):
    """The compact model's family: Qwen2-VL code with an image-only prompt and a LaTeX tokenizer.

    `model_types` is empty on purpose: a compact checkpoint's config.json says `qwen2_vl`, and the Qwen2-VL
    family serves it identically (the prompt lives in the checkpoint's chat template); this family is
    picked by name (`model.family: compact`) or for the `default` model.
    """

    name = "compact"
    model_types = ()
    hub_patterns = ()
    chat_template = COMPACT_TEMPLATE

    def prompt(self, processor: Any) -> str:
        return PROMPT

    def end_token(self, processor: Any) -> str:
        return EOS


def compact_config(size: str = "base", vocab_size: int = 1344, token_ids: dict[str, int] | None = None) -> Any:
    """The `Qwen2VLConfig` of a compact model of `size` (`base` or `tiny`)."""
    from transformers import Qwen2VLConfig

    from texocr.errors import TexocrError

    if size not in SIZES:
        raise TexocrError(f"unknown compact size {size!r}; choose one of {', '.join(SIZES)}")
    s = SIZES[size]
    ids = token_ids or {t: i for i, t in enumerate(QWEN_SPECIALS)}
    half = s["hidden"] // s["heads"] // 2  # M-RoPE splits the rotary half-dim into (time, height, width)
    hw = (half - half // 4) // 2  # width and height get most of it: a formula is a 2-D layout, time is 1
    return Qwen2VLConfig(
        vision_config={"depth": s["vis_depth"], "embed_dim": s["vis_dim"], "num_heads": s["vis_heads"],
                       "hidden_size": s["hidden"], "mlp_ratio": 4, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        text_config={"vocab_size": vocab_size, "hidden_size": s["hidden"], "intermediate_size": s["ffn"],
                     "num_hidden_layers": s["layers"], "num_attention_heads": s["heads"],
                     "num_key_value_heads": s["kv_heads"], "max_position_embeddings": 2048,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                         "mrope_section": [half - 2 * hw, hw, hw]},
                     "bos_token_id": None, "eos_token_id": ids[EOS], "pad_token_id": ids[PAD]},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,  # input and output embeddings share one matrix: small vocab, fewer bytes
    )


def build_compact_processor() -> Any:
    """Processor = PIL Qwen2-VL image processor + LaTeX tokenizer + the image-only chat template."""
    import transformers

    from texocr.models.latex_tokenizer import build_latex_tokenizer

    tok = build_latex_tokenizer(QWEN_SPECIALS, eos=EOS, pad=PAD)
    image_processor = transformers.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2)
    family = Compact()
    processor = family.processor_class()(image_processor, tok, chat_template=COMPACT_TEMPLATE)
    family.configure_processor(processor, None)
    return processor


def build_compact(
    out_dir: str | Path, size: str = "base", *, seed: int = 0, dtype: str = "float32"
) -> Path:
    """Write a randomly initialized compact model + processor to `out_dir`; returns the path.

    `dtype="bfloat16"` halves the file (how the trained model ships).
    """
    import torch
    from transformers import Qwen2VLForConditionalGeneration

    from texocr.models.tiny_parts import padded_vocab_size

    processor = build_compact_processor()
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = compact_config(size, padded_vocab_size(tok), ids)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids[EOS]
    model.generation_config.pad_token_id = ids[PAD]
    model = model.to(getattr(torch, dtype))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def grow_compact(model_dir: str | Path, size: str, out_dir: str | Path) -> Path:
    """Write to `out_dir` the compact model of `model_dir` deepened to `size` (same widths, more layers).

    The layers of `size` beyond the trained ones are copies of the last trained layer (vision or text) whose
    output projections (`attn.proj`/`mlp.fc2`, `self_attn.o_proj`/`mlp.down_proj`) are zero: each adds zero to
    its residual stream, so the grown model computes what the trained one did, and further training starts
    from the trained model with more capacity instead of from scratch.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    from texocr.errors import TexocrError

    if size not in SIZES:
        raise TexocrError(f"unknown compact size {size!r}; choose one of {', '.join(SIZES)}")
    old = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype="auto")
    dtype = next(old.parameters()).dtype  # kept: the shipped model is bfloat16
    vis, txt = old.config.vision_config, old.config.text_config
    want = SIZES[size]
    same = (vis.embed_dim, vis.num_heads, txt.hidden_size, txt.num_attention_heads, txt.num_key_value_heads,
            txt.intermediate_size) == tuple(want[k] for k in ("vis_dim", "vis_heads", "hidden", "heads",
                                                                 "kv_heads", "ffn"))
    if not same or want["vis_depth"] < vis.depth or want["layers"] < txt.num_hidden_layers:
        raise TexocrError(f"{model_dir} cannot grow into {size!r}: {size} must have the same widths and at least "
                          f"its {vis.depth} vision and {txt.num_hidden_layers} text layers")
    tok = AutoTokenizer.from_pretrained(model_dir)
    config = compact_config(size, txt.vocab_size, {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS})
    new = Qwen2VLForConditionalGeneration(config)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    prefixes = tuple([f"model.visual.blocks.{i}." for i in range(vis.depth, want["vis_depth"])]
                     + [f"model.language_model.layers.{i}." for i in range(txt.num_hidden_layers, want["layers"])])
    if unexpected or any(not k.startswith(prefixes) for k in missing):
        raise TexocrError(f"{model_dir}: weights that do not match {size!r}: {(unexpected or missing)[:3]}")
    with torch.no_grad():
        for blocks, n_old, outs in ((new.model.visual.blocks, vis.depth, ("attn.proj", "mlp.fc2")),
                                    (new.model.language_model.layers, txt.num_hidden_layers,
                                     ("self_attn.o_proj", "mlp.down_proj"))):
            for i in range(n_old, len(blocks)):
                blocks[i].load_state_dict(blocks[n_old - 1].state_dict())  # copies the values
                for name in outs:
                    for param in blocks[i].get_submodule(name).parameters():
                        param.zero_()
    new.generation_config = old.generation_config
    new = new.to(dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    new.save_pretrained(out)
    for f in Path(model_dir).iterdir():  # tokenizer, processor, chat template: unchanged
        if f.is_file() and not f.name.startswith("model") and f.name not in ("config.json", "generation_config.json",
                                                                              "README.md"):
            shutil.copy(f, out / f.name)
    return out


FAMILY_CLASSES = [Compact]
"""Picked up by `texocr.models.registry` like the other optional family modules."""
