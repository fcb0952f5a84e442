"""Shared fixtures.

`tiny_model_dir(family) -> Path`  (session scope, factory)
    Builds a tiny random model + processor of a family (`qwen2_vl`, `qwen2_5_vl`, `qwen3_vl`, `paligemma`,
    `paligemma2`, `idefics3`, `smolvlm`, `mllama`; see `texocr.models.tiny`) once per test session into a
    temporary directory and returns that directory, loadable with
    `load_model(ModelConfig(name_or_path=str(path)))`. Builds happen on first use only.

`tiny_loaded(family) -> LoadedModel`  (session scope, factory)
    The tiny model loaded for inference (float32, CPU), cached per family. Do not train it in place:
    load your own copy with `load_model(..., training=True)` for that.

`formula_image(w=112, h=32, text="x^2") -> PIL.Image`  (function scope, factory)
    A white RGB image with some black text drawn on it.

The hub is switched off for the whole session (`HF_HUB_OFFLINE=1`): nothing here can download.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

# No test may reach a model hub: fail fast instead of retrying a download for a minute.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Property tests: random locally (each run searches new inputs, and a failure found is replayed from
# .hypothesis/), the same examples every run in CI (`.ci/run` sets HYPOTHESIS_PROFILE=ci), so a CI
# result never depends on luck or on a database left by an earlier run.
from hypothesis import settings as _hypothesis_settings

_hypothesis_settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
_hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    from texocr.models.tiny import build_tiny

    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_tiny(family, tmp_path_factory.mktemp(f"tiny-{family}"))
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir: Callable[[str], Path]) -> Callable[[str], Any]:
    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    cache: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in cache:
            cache[family] = load_model(ModelConfig(name_or_path=str(tiny_model_dir(family))), device="cpu")
        return cache[family]

    return get


@pytest.fixture
def formula_image() -> Callable[..., Any]:
    from PIL import Image, ImageDraw

    def make(w: int = 112, h: int = 32, text: str = "x^2") -> Any:
        im = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(im).text((4, max(0, h // 2 - 6)), text, fill="black")
        return im

    return make
