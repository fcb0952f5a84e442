"""What a saved run or model says about how to read it: the weights to load and the settings it was trained with.

    saved = read_saved("runs/x")          # a run folder: config.yaml + model/ (full) or adapter/ (LoRA)
    saved = read_saved("runs/x/adapter")  # a run's model/ or adapter/ folder: the run's config.yaml above it
    saved.model, saved.adapter            # what `load_model` loads
    saved.model_options                   # {"family": "compact", "max_pixels": 25088}: ModelConfig keys
    saved.options                         # {"batch_size": 32, "max_new_tokens": 128}: Recognizer settings

A model folder that is not part of a run still carries its image budget: texocr's processors write it to
processor_config.json (`IMAGE_BUDGET_KEY`, read by the family when the processor is built), and may carry
Recognizer settings in `OPTIONS_FILE` (the shipped model's `{"glyph_height": 16}`: how it reads best). Settings
given by the caller (a CLI flag, a config key) win over saved ones; saved ones win over the defaults.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from texocr.errors import TexocrError

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
MODEL_KEYS = ("family", "min_pixels", "max_pixels")
"""ModelConfig keys a run's config gives the model it saved (how its images were sized, which family)."""
OPTION_KEYS = ("batch_size", "max_new_tokens", "num_beams", "glyph_height", "reread", "reread_below")
"""EvalConfig keys that are Recognizer settings (`Recognizer(batch_size=...)`)."""
OPTIONS_FILE = "texocr_options.json"
"""A model folder's Recognizer settings (`OPTION_KEYS`), for a folder that is not part of a run."""
IMAGE_BUDGET_KEY = "texocr_image_budget"
"""processor_config.json key: `{"min_pixels": n, "max_pixels": n}`, the budget the processor was saved with."""


@dataclass
class Saved:
    """The weights to load and the settings saved with them (empty when nothing was saved)."""

    model: str
    adapter: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    config: Path | None = None
    """The run's config.yaml the settings came from, if any."""


def _run_of(path: Path) -> Path | None:
    """The run folder holding `path` (a run itself, or its model/ or adapter/), else None."""
    if (path / RUN_CONFIG).is_file() and ((path / "model").is_dir() or (path / "adapter").is_dir()):
        return path
    if path.name in ("model", "adapter") and (path.parent / RUN_CONFIG).is_file():
        return path.parent
    return None


def read_saved(model: str, adapter: str | None = None) -> Saved:
    """The weights and settings `model` (+ `adapter`) stand for; see the module docstring."""
    from texocr.config import ConfigError, load_config

    path = Path(model)
    run = _run_of(path) if path.is_dir() else None
    if run is None and adapter and Path(adapter).is_dir():
        run = _run_of(Path(adapter))
    if run is None:
        return Saved(model, adapter, options=folder_options(path) if path.is_dir() else {})
    try:
        cfg = load_config(run / RUN_CONFIG)
    except ConfigError as e:  # another tool's config.yaml beside a `model/` folder, or a damaged one: say so, go on
        log.warning("%s does not load as a texocr run's config (%s): its settings are not used", run / RUN_CONFIG, e)
        return Saved(model, adapter)
    if path == run:  # the run folder itself: its final weights
        if (run / "model").is_dir():
            model = str(run / "model")
        else:
            model, adapter = cfg.model.name_or_path, adapter or str(run / "adapter")
    model_options = {k: getattr(cfg.model, k) for k in MODEL_KEYS if getattr(cfg.model, k) is not None}
    options = {k: getattr(cfg.eval, k) for k in OPTION_KEYS if getattr(cfg.eval, k) is not None}
    return Saved(model, adapter, model_options, options, run / RUN_CONFIG)


def folder_options(folder: Path) -> dict[str, Any]:
    """The Recognizer settings a model folder's `OPTIONS_FILE` gives (`{}` without one); unknown keys refused."""
    file = folder / OPTIONS_FILE
    if not file.is_file():
        return {}
    try:
        options = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TexocrError(f"{file}: not readable JSON ({e})") from None
    if not isinstance(options, dict) or set(options) - set(OPTION_KEYS):
        raise TexocrError(f"{file}: expected an object with keys among {', '.join(OPTION_KEYS)}, got {options!r}")
    return options


def with_image_budget(out: dict[str, Any], processor: Any) -> dict[str, Any]:
    """A processor's `to_dict()` with the budget texocr set on it (`IMAGE_BUDGET_KEY`), for processor_config.json."""
    out.pop(IMAGE_BUDGET_KEY, None)
    budget = getattr(processor, IMAGE_BUDGET_KEY, None)
    if budget:  # read back by `saved_image_budget`; stock processors ignore the key
        out[IMAGE_BUDGET_KEY] = dict(budget)
    return out


def keeps_budget(processor_cls: type) -> type:
    """A subclass of a stock processor class that writes texocr's image budget into processor_config.json (and
    names the stock class there, so stock `AutoProcessor` still loads the folder)."""

    class Processor(processor_cls):  # type: ignore[misc,valid-type]
        def to_dict(self) -> dict[str, Any]:
            out = super().to_dict()
            out["processor_class"] = processor_cls.__name__
            return with_image_budget(out, self)

    Processor.__name__ = Processor.__qualname__ = f"Texocr{processor_cls.__name__}"
    return Processor


def saved_image_budget(path: str) -> dict[str, int]:
    """`{"min_pixels", "max_pixels"}` that texocr saved in `path`'s processor_config.json, else `{}`."""
    file = Path(path) / "processor_config.json"
    if not file.is_file():
        return {}
    try:
        budget = json.loads(file.read_text(encoding="utf-8")).get(IMAGE_BUDGET_KEY) or {}
    except (OSError, ValueError) as e:
        raise TexocrError(f"{file}: not a readable processor config ({e})") from None
    return {k: int(budget[k]) for k in ("min_pixels", "max_pixels") if isinstance(budget.get(k), int)}


def explicit_keys(config: str | None, overrides: list[str] | None, section: str) -> dict[str, Any]:
    """The keys of `section` that a YAML config file or dotted overrides set explicitly (not the defaults).

    Validated values: `load_config` with the same arguments must have succeeded (it raises on a bad key).
    """
    import yaml

    from texocr.config import load_config, parse_overrides

    raw: dict[str, Any] = {}
    if config:
        raw = dict((yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}).get(section) or {})
    raw.update(parse_overrides(overrides or []).get(section, {}))
    resolved = getattr(load_config(config, overrides), section)
    return {k: getattr(resolved, k) for k in raw}
