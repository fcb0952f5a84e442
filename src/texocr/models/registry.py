"""The family registry: name -> `Family`, and detection from a local checkpoint or a hub id.

    family = detect_family("Qwen/Qwen2-VL-7B-Instruct")      # hub-id pattern
    family = detect_family("runs/tiny-qwen")                  # config.json model_type
    register_family(MyFamily())                               # e.g. texocr's compact model
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from texocr.errors import TexocrError

if TYPE_CHECKING:
    from texocr.models.base import Family

FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Add (or replace) a family under `family.name`; returns it."""
    if not family.name:
        raise ValueError("a Family needs a name")
    FAMILIES[family.name] = family
    return family


def _register_builtin() -> None:
    from texocr.models import compact, idefics3, mllama, paligemma, qwen_vl

    for mod in (qwen_vl, paligemma, idefics3, mllama, compact):
        for cls in mod.FAMILY_CLASSES:
            fam = cls()
            FAMILIES.setdefault(fam.name, fam)


_builtin_loaded = False


def _families() -> dict[str, Family]:
    global _builtin_loaded
    if not _builtin_loaded:
        _builtin_loaded = True
        _register_builtin()
    return FAMILIES


def known_families() -> list[str]:
    return sorted(_families())


def get_family(name: str) -> Family:
    """The family registered as `name` (a family name or a config.json `model_type`)."""
    families = _families()
    if name in families:
        return families[name]
    for fam in families.values():
        if name in fam.model_types:
            return fam
    raise TexocrError(f"unknown model family {name!r}; known families: {', '.join(known_families())}")


def read_model_type(path: str | Path) -> str | None:
    """`model_type` from a local checkpoint's config.json (or its adapter's base), else None."""
    p = Path(path)
    cfg = p / "config.json"
    if cfg.is_file():
        try:
            return json.loads(cfg.read_text()).get("model_type")
        except (OSError, ValueError) as e:
            raise TexocrError(f"{cfg}: not a readable config.json ({e})") from None
    return None


def detect_family(name_or_path: str, family: str | None = None) -> Family:
    """Pick the family: explicit `family` > local config.json `model_type` > hub-id pattern."""
    if family:
        return get_family(family)
    families = _families()
    model_type = read_model_type(name_or_path) if Path(name_or_path).is_dir() else None
    if model_type is not None:
        for fam in families.values():
            if model_type in fam.model_types:
                return fam
        raise TexocrError(
            f"{name_or_path}: model_type {model_type!r} is not supported; known families: "
            f"{', '.join(known_families())} (set model.family to force one)"
        )
    for fam in families.values():
        if fam.matches_hub_id(name_or_path):
            return fam
    raise TexocrError(
        f"cannot tell the model family of {name_or_path!r}; known families: {', '.join(known_families())} "
        "(set model.family)"
    )
