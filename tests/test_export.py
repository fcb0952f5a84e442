"""`texocr export`: a LoRA adapter (language + vision tower) merged into its base gives the adapter model's logits."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image, ImageDraw

from texocr.config import ModelConfig


def test_export_merges_every_adapter(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    from texocr.cli import main as cli
    from texocr.data.collate import Collator
    from texocr.models.loading import load_model
    from texocr.sample import Sample

    base = tiny_model_dir("qwen2_vl")
    cfg = ModelConfig(name_or_path=str(base), lora_scope="vision_language", lora_r=4, lora_alpha=8)
    peft_model = load_model(cfg, training=True).model
    torch.manual_seed(0)
    with torch.no_grad():  # B starts at zero: give every adapter a real delta
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    out = tmp_path / "merged"
    assert cli(["export", "--model", str(base), "--adapter", str(adapter), "--out", str(out)]) == 0
    assert json.loads((out / "texocr_export.json").read_text())["family"] == "qwen2_vl"

    with_adapter = load_model(ModelConfig(name_or_path=str(base), adapter=str(adapter)))
    merged = AutoModelForImageTextToText.from_pretrained(out).eval()  # plain transformers, no peft
    assert not [n for n, _ in merged.named_modules() if "lora" in n]
    plain = AutoModelForImageTextToText.from_pretrained(base)
    vis = "model.visual.blocks.0.attn.qkv.weight"
    assert not torch.equal(merged.state_dict()[vis], plain.state_dict()[vis])  # the vision tower's adapter too

    images = []
    for t in ("x^2", "a+b"):
        im = Image.new("RGB", (64, 32), "white")
        ImageDraw.Draw(im).text((2, 8), t, fill="black")
        images.append(Sample(im, t, t))
    batch = Collator(with_adapter, 1024, normalize=True)(images)
    batch.pop("labels")
    with torch.no_grad():
        a = with_adapter.model(**batch).logits
        m = merged(**batch).logits
    torch.testing.assert_close(m, a, atol=1e-5, rtol=1e-5)


def test_export_refuses_a_non_empty_out(tiny_model_dir, tmp_path, capsys):
    from texocr.cli import main as cli

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    base = str(tiny_model_dir("qwen2_vl"))
    assert cli(["export", "--model", base, "--out", str(tmp_path / "busy")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_export_saves_a_full_model_in_another_dtype(tiny_model_dir, tmp_path):
    """No adapter: the model is saved again in --dtype (a pretraining run's float32 model/ -> bfloat16)."""
    import torch
    from safetensors import safe_open

    from texocr.cli import main as cli
    from texocr.config import ModelConfig
    from texocr.models.loading import load_model

    base = str(tiny_model_dir("qwen2_vl"))
    assert cli(["export", "--model", base, "--dtype", "bfloat16", "--out", str(tmp_path / "o")]) == 0
    for f in (tmp_path / "o").glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            assert all(st.get_tensor(k).dtype == torch.bfloat16 for k in st.keys())  # noqa: SIM118 -- not a dict
    a = load_model(ModelConfig(name_or_path=base, dtype="float32"), device="cpu").model.state_dict()
    b = load_model(ModelConfig(name_or_path=str(tmp_path / "o"), dtype="float32"), device="cpu").model.state_dict()
    for k, v in a.items():
        torch.testing.assert_close(v.to(torch.bfloat16).float(), b[k], msg=k)


@pytest.mark.parametrize("argv", [["export", "--help"], ["train", "--help"]])
def test_help(argv, capsys):
    from texocr.cli import main as cli

    with pytest.raises(SystemExit) as e:
        cli(argv)
    assert e.value.code == 0 and "--" in capsys.readouterr().out


def _floats(folder):
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def test_average_saves_the_weighted_mean_of_the_models(tmp_path):
    """`--average`: every weight is the weighted mean, tied embeddings included; the record names the models."""
    from texocr.cli import main as cli
    from texocr.models.compact import build_compact

    a, b = (build_compact(tmp_path / n, size="tiny", seed=s) for n, s in (("a", 0), ("b", 1)))
    (a / "texocr_options.json").write_text('{"glyph_height": 16}')  # the first model's options are kept
    out = tmp_path / "soup"
    assert cli(["export", "--model", str(a), "--average", str(b), "--weights", "3", "1", "--dtype", "float32",
                "--out", str(out)]) == 0
    wa, wb, got = _floats(a), _floats(b), _floats(out)
    assert got.keys() == wa.keys()
    for k, v in got.items():
        torch.testing.assert_close(v, 0.75 * wa[k] + 0.25 * wb[k], msg=k)
    # the seeds' matrices differ (norm weights start at 1 in both): the mean is not one of the two
    assert all(not torch.equal(wa[k], wb[k]) for k in got if wa[k].dim() == 2)
    record = json.loads((out / "texocr_export.json").read_text())
    assert record["averaged"] == [str(a), str(b)] and record["weights"] == [0.75, 0.25]
    assert json.loads((out / "texocr_options.json").read_text()) == {"glyph_height": 16}


def test_average_in_bfloat16_is_the_float32_mean_rounded(tmp_path):
    from texocr.cli import main as cli
    from texocr.models.compact import build_compact

    a, b = (build_compact(tmp_path / n, size="tiny", seed=s, dtype="bfloat16") for n, s in (("a", 0), ("b", 1)))
    out = tmp_path / "soup"
    assert cli(["export", "--model", str(a), "--average", str(b), "--dtype", "bfloat16", "--out", str(out)]) == 0
    wa, wb, got = _floats(a), _floats(b), _floats(out)
    for k, v in got.items():
        assert torch.equal(v, ((wa[k] + wb[k]) / 2).to(torch.bfloat16).float()), k
    assert json.loads((out / "config.json").read_text())["vision_config"]["dtype"] == "bfloat16"


@pytest.mark.parametrize(("other", "argv", "message"), [
    ("wider", [], "model.visual.merger.mlp.2.weight is (32, 128), not (64, 128)"),
    ("compact", [], "vocabulary differs"),
    ("same", ["--weights", "1"], "--weights: give 2 non-negative numbers"),
    ("same", ["--weights", "1", "-1"], "--weights: give 2 non-negative numbers"),
])
def test_average_refuses_models_that_do_not_match(tiny_model_dir, tmp_path, capsys, other, argv, message):
    """Another shape or vocabulary, or wrong weights: a clear error, and no output folder."""
    from texocr.cli import main as cli
    from texocr.models.compact import build_compact
    from texocr.models.tiny import build_tiny

    base = tiny_model_dir("qwen2_vl")
    second = {"wider": lambda: build_tiny("qwen2_vl", tmp_path / "w", hidden_size=32, heads=4),
              "compact": lambda: build_compact(tmp_path / "c", size="tiny"),
              "same": lambda: base}[other]()
    out = tmp_path / "soup"
    assert cli(["export", "--model", str(base), "--average", str(second), *argv, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_weights_need_average(tiny_model_dir, tmp_path, capsys):
    from texocr.cli import main as cli

    base = str(tiny_model_dir("qwen2_vl"))
    assert cli(["export", "--model", base, "--weights", "1", "--out", str(tmp_path / "o")]) == 2
    assert "--weights needs --average" in capsys.readouterr().err
