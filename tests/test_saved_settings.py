"""A run trained at a non-default image budget is read at that budget by `Recognizer.load`, `texocr predict` and
`texocr eval`, with its saved generation settings; flags and config keys given by the user win over saved ones."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from texocr.cli import main as cli
from texocr.infer import Recognizer

PER_TOKEN = (14 * 2) ** 2  # pixels per image token of a Qwen2-VL processor (patch 14, merge 2)
BUDGET = 8  # image tokens, against the default of 256
WIDE = (448, 112)  # 64 tokens' worth of pixels: more than BUDGET, less than the default


def _image(text: str) -> Image.Image:
    im = Image.new("RGB", WIDE, "white")
    ImageDraw.Draw(im).text((8, 40), text, fill="black")
    return im


@pytest.fixture(scope="module")
def run(tiny_model_dir: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(base model, run folder, data): 2 LoRA steps of the tiny Qwen2-VL at an 8-token budget, 7 new tokens, batch 3."""
    data = tmp_path_factory.mktemp("budget-data")
    rows = []
    for i, latex in enumerate(["x^2", "a+b", "y_1"]):
        _image(latex).save(data / f"{i}.png")
        rows.append({"image": f"{i}.png", "latex": latex})
    (data / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base, out = tiny_model_dir("qwen2_vl"), tmp_path_factory.mktemp("budget-run")
    config = data / "run.yaml"
    config.write_text(f"""model: {{name_or_path: {base}, lora_r: 2, lora_alpha: 4, min_pixels: {4 * PER_TOKEN},
        max_pixels: {BUDGET * PER_TOKEN}}}
data: {{train: [{data}]}}
train: {{output_dir: {out}, max_steps: 2, batch_size: 3, logging_steps: 1}}
eval: {{max_new_tokens: 7, batch_size: 3}}
""")
    rc = cli(["train", "--config", str(config)])
    assert rc == 0 and (out / "adapter" / "adapter_config.json").is_file()
    return base, out, data


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What every Recognizer that generates is set to, and how many image tokens its prompts hold."""
    calls: list[dict[str, Any]] = []
    encode = Recognizer._encode

    def spy(self: Recognizer, images: list[Any], *args: Any, **kwargs: Any) -> Any:
        enc = encode(self, images, *args, **kwargs)
        image_id = self.family.image_token_id(self.processor)
        calls.append({**self.settings(), "budget": self.image_tokens(),
                      "image_tokens": int((enc["input_ids"][0] == image_id).sum())})
        return enc

    monkeypatch.setattr(Recognizer, "_encode", spy)
    return calls


def test_recognizer_load_reads_the_run_settings(run: tuple[Path, Path, Path], tmp_path: Path) -> None:
    base, out, _ = run
    for rec in (Recognizer.load(str(out)), Recognizer.load(str(base), adapter=str(out / "adapter")),
                Recognizer.load(str(out / "adapter"))):
        assert rec.image_tokens() == BUDGET
        assert (rec.max_new_tokens, rec.batch_size) == (7, 3)
    # the adapter alone, out of its run: the budget travels in its processor_config.json
    shutil.copytree(out / "adapter", tmp_path / "adapter")
    alone = Recognizer.load(str(base), adapter=str(tmp_path / "adapter"))
    assert alone.image_tokens() == BUDGET and alone.max_new_tokens == 256
    # the base model keeps the default budget, and arguments override what was saved
    assert Recognizer.load(str(base)).image_tokens() == 256
    over = Recognizer.load(str(out), max_pixels=16 * PER_TOKEN, max_new_tokens=5)
    assert (over.image_tokens(), over.max_new_tokens, over.batch_size) == (16, 5, 3)


def test_predict_uses_the_saved_budget(run: tuple[Path, Path, Path], seen: list[dict[str, Any]],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _, out, data = run
    assert cli(["predict", "--model", str(out / "adapter"), str(data / "0.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["error"] is None
    assert seen[-1]["budget"] == BUDGET and 0 < seen[-1]["image_tokens"] <= BUDGET
    assert seen[-1]["max_new_tokens"] == 7
    assert cli(["predict", "--model", str(out / "adapter"), str(data / "0.png"), "--max-new-tokens", "5"]) == 0
    assert seen[-1]["max_new_tokens"] == 5 and seen[-1]["budget"] == BUDGET


def test_eval_uses_the_saved_budget(run: tuple[Path, Path, Path], seen: list[dict[str, Any]],
                                    tmp_path: Path) -> None:
    base, out, data = run
    assert cli(["eval", "--model", str(base), "--adapter", str(out / "adapter"), "--data", str(data),
                "--out", str(tmp_path / "e1"), "--no-render", "--split", "train"]) == 0
    assert {(c["budget"], c["max_new_tokens"], c["batch_size"]) for c in seen} == {(BUDGET, 7, 3)}
    assert all(0 < c["image_tokens"] <= BUDGET for c in seen)
    seen.clear()
    assert cli(["eval", "--model", str(out), "--data", str(data), "--out", str(tmp_path / "e2"), "--no-render",
                "--split", "train", "--eval.max_new_tokens", "4", "--batch-size", "2"]) == 0
    assert {(c["budget"], c["max_new_tokens"], c["batch_size"]) for c in seen} == {(BUDGET, 4, 2)}


def test_a_foreign_config_beside_a_model_folder_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from texocr.models.saved import read_saved

    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text("optimizer: adam\n")  # another tool's file, not a texocr run
    saved = read_saved(str(tmp_path / "model"))
    assert (saved.model, saved.adapter, saved.options, saved.model_options) == (str(tmp_path / "model"), None, {}, {})
    assert "does not load as a texocr run's config" in caplog.text and "optimizer" in caplog.text


@pytest.mark.parametrize(("family", "max_pixels"), [("qwen3_vl", 8 * 32 * 32), ("idefics3", 96 * 96),
                                                    ("smolvlm", 96 * 96)])
def test_a_model_folder_keeps_its_image_budget(family: str, max_pixels: int, tiny_model_dir: Callable[[str], Path],
                                               tmp_path: Path) -> None:
    """Saved with a budget, built again with no config: the same budget (not the family's default)."""
    from texocr.config import ModelConfig
    from texocr.models.registry import get_family

    fam = get_family(family)
    default = fam.build_processor(str(tiny_model_dir(family)))
    chosen = fam.build_processor(str(tiny_model_dir(family)), ModelConfig(max_pixels=max_pixels))
    assert fam.max_image_tokens(chosen) != fam.max_image_tokens(default)
    chosen.save_pretrained(str(tmp_path))
    again = fam.build_processor(str(tmp_path))
    assert fam.max_image_tokens(again) == fam.max_image_tokens(chosen)
    assert type(again).__name__ == type(chosen).__name__


def test_one_given_bound_wins_over_a_saved_or_default_other(tiny_model_dir: Callable[[str], Path]) -> None:
    from texocr.config import ModelConfig
    from texocr.errors import TexocrError
    from texocr.models.registry import get_family

    fam = get_family("qwen2_vl")
    proc = fam.build_processor(str(tiny_model_dir("qwen2_vl")), ModelConfig(max_pixels=8 * PER_TOKEN))
    assert proc.image_processor.size["shortest_edge"] == proc.image_processor.size["longest_edge"] == 8 * PER_TOKEN
    with pytest.raises(TexocrError, match="min_pixels .* is larger than model.max_pixels"):
        fam.build_processor(str(tiny_model_dir("qwen2_vl")), ModelConfig(min_pixels=9 * PER_TOKEN,
                                                                          max_pixels=8 * PER_TOKEN))


def test_a_model_folder_carries_its_reading_settings(tiny_model_dir: Callable[[str], Path], tmp_path: Path) -> None:
    """`texocr_options.json` in a model folder (the shipped model's glyph height): used by `Recognizer.load`,
    a given setting wins (0 turns enlarging off), and a malformed file is refused with its path."""
    from texocr.errors import TexocrError
    from texocr.models.saved import OPTIONS_FILE, read_saved

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2_vl"), folder)
    (folder / OPTIONS_FILE).write_text(json.dumps({"glyph_height": 16, "max_new_tokens": 9}))
    assert read_saved(str(folder)).options == {"glyph_height": 16, "max_new_tokens": 9}
    rec = Recognizer.load(str(folder), device="cpu")
    assert (rec.glyph_height, rec.max_new_tokens) == (16, 9)
    assert Recognizer.load(str(folder), device="cpu", glyph_height=0).glyph_height == 0
    (folder / OPTIONS_FILE).write_text(json.dumps({"glyph_hieght": 16}))
    with pytest.raises(TexocrError, match=OPTIONS_FILE):
        read_saved(str(folder))


def test_reread_settings_travel_in_a_model_folder(tiny_model_dir, tmp_path):
    """`reread`/`reread_below` in `texocr_options.json` (as the shipped model carries them) reach the Recognizer;
    a caller's value wins, and `--reread 0` turns it off."""
    from texocr.models.saved import OPTIONS_FILE

    folder = tmp_path / "m"
    shutil.copytree(tiny_model_dir("qwen2_vl"), folder)
    (folder / OPTIONS_FILE).write_text(json.dumps({"glyph_height": 20, "reread": [16], "reread_below": -0.01}))
    rec = Recognizer.load(str(folder), device="cpu")
    assert (rec.glyph_height, rec.reread, rec.reread_below) == (20, (16.0,), -0.01)
    assert Recognizer.load(str(folder), device="cpu", reread=[18, 22]).reread == (18.0, 22.0)
    assert Recognizer.load(str(folder), device="cpu", reread=[0]).reread == ()
