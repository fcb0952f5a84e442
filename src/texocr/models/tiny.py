"""Tiny random models of each family, built locally (no hub), for tests and CPU demos.

    from texocr.models.tiny import build_tiny
    path = build_tiny("qwen2_vl", "/tmp/tiny-qwen2vl")      # config + random weights + processor
    loaded = load_model(ModelConfig(name_or_path=str(path)))

Each model uses the real transformers config and model classes of its family with 2 small layers, and
a character-level tokenizer (printable ASCII + common LaTeX commands as whole tokens + the family's
special tokens) so that any LaTeX string round-trips through encode/decode exactly.

The builders live beside this module (`tiny_qwen.py`, `tiny_others.py`), not in the family modules: the
production import path (registry -> families) never reaches test-only code, and this entry point may import
the registry without an import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from texocr.errors import TexocrError
from texocr.models.tiny_parts import (  # noqa: F401 -- re-exported for tests and bench
    LATEX_COMMANDS,
    char_tokenizer,
    padded_vocab_size,
    save_tiny,
)

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "paligemma2": ("paligemma", {"variant": "paligemma2"}),
}
"""Tiny-model names that are a variant of a registered family."""


def _builders() -> dict[str, Callable[..., None]]:
    """Family name -> `builder(family, out_dir, **sizes)`."""
    from texocr.models.compact import build_compact
    from texocr.models.tiny_others import (
        build_tiny_idefics3,
        build_tiny_mllama,
        build_tiny_paligemma,
    )
    from texocr.models.tiny_qwen import build_tiny_qwen

    def compact(family: Any, out_dir: str, **sizes: Any) -> None:
        build_compact(out_dir, size="tiny", **sizes)

    return {"qwen2_vl": build_tiny_qwen, "qwen2_5_vl": build_tiny_qwen, "qwen3_vl": build_tiny_qwen,
            "paligemma": build_tiny_paligemma, "idefics3": build_tiny_idefics3, "smolvlm": build_tiny_idefics3,
            "mllama": build_tiny_mllama, "compact": compact}


def build_tiny(family_name: str, out_dir: str | Path, **sizes: Any) -> Path:
    """Build a tiny random model + processor of `family_name` and save both to `out_dir`.

    `sizes` override the family builder's defaults (e.g. `hidden_size=32`). Returns `out_dir`.
    """
    import torch

    from texocr.models.registry import get_family

    if family_name in VARIANTS:  # e.g. `paligemma2`: same family, another text backbone
        family_name, extra = VARIANTS[family_name]
        sizes = {**extra, **sizes}
    family = get_family(family_name)
    builder = _builders().get(family.name)
    if builder is None:
        raise TexocrError(f"no tiny builder for family {family.name!r}; tiny builders exist for "
                          f"{', '.join(sorted(_builders()))}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(sizes.pop("seed", 0))
    builder(family, str(out), **sizes)
    return out
