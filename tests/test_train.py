"""`texocr train` on tiny random models: loss falls, every trainable parameter moves, save -> load gives the
same logits, resume continues with the same losses as an uninterrupted run, and the output layout exists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from texocr.config import ModelConfig, load_config
from texocr.train_callbacks import COMPLETE_MARKER, read_csv_log, resolve_resume

LATEX = ["x^2", "a+b", r"\frac{1}{2}", "y_1"]


def _image(text: str) -> Image.Image:
    im = Image.new("RGB", (64, 32), "white")
    ImageDraw.Draw(im).text((2, 8), text, fill="black")
    return im


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labels.jsonl folder of 4 formulas plus one corrupt image (skipped, never fatal)."""
    root = tmp_path_factory.mktemp("train-data")
    rows = []
    for i, latex in enumerate(LATEX):
        _image(latex).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "latex": latex})
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    rows.append({"image": "bad.png", "latex": "z"})
    (root / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _config(model_dir: Path, data: Path, out: Path, *extra: str):
    return load_config(None, [
        "--model.name_or_path", str(model_dir), "--model.lora_r", "4", "--model.lora_alpha", "8",
        "--data.train", str(data), "--data.val", "[]", "--train.output_dir", str(out),
        "--train.batch_size", "4", "--train.lr", "0.01", "--train.logging_steps", "1",
        "--train.warmup_ratio", "0", "--eval.max_new_tokens", "4", "--eval.batch_size", "4", *extra,
    ])


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()


def _batch(loaded) -> dict:
    from texocr.data.collate import Collator
    from texocr.sample import Sample

    collate = Collator(loaded, 1024, normalize=True)
    return collate([Sample(_image(t), t, str(i)) for i, t in enumerate(LATEX[:2])])


def _assert_layout(out: Path, weights: str) -> None:
    for name in ("config.yaml", "metrics.json", "loss_curve.png", "logs/metrics.csv", f"{weights}/config.json"
                 if weights == "model" else f"{weights}/adapter_config.json", f"{weights}/processor_config.json"):
        assert (out / name).is_file(), name
    assert list((out / "logs").glob("events.out.tfevents.*")), "no TensorBoard events in logs/"
    assert not (out / "checkpoints" / "runs").exists()


ALL_FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "paligemma", "paligemma2", "idefics3", "smolvlm", "mllama",
                "compact"]


@pytest.mark.parametrize("family", ALL_FAMILIES)
@pytest.mark.parametrize("method", ["lora", "full"])
def test_train_save_load_resume(method, family, tiny_model_dir, data_dir, tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import set_seed

    from texocr.cli import main as cli
    from texocr.models.loading import load_model
    from texocr.train import train

    base = tiny_model_dir(family)
    if family == "mllama":  # its cross-attention gates start at 0: open them so vision-side weights get gradients
        base = _open_mllama_gates(base, tmp_path / "mllama")
    out_a = tmp_path / "a"
    cfg = _config(base, data_dir, out_a, "--model.method", method, "--train.max_steps", "6",
                  "--train.save_steps", "3")
    set_seed(cfg.train.seed)  # train() seeds the same way before building the model: same initial weights
    initial = load_model(cfg.model, training=True).model
    before = (get_peft_model_state_dict(initial) if method == "lora" else initial.state_dict())
    before = {k: v.detach().clone() for k, v in before.items()}

    result = train(cfg)
    weights = "adapter" if method == "lora" else "model"
    _assert_layout(out_a, weights)
    skipped = [json.loads(x) for x in (out_a / "skipped.jsonl").read_text().splitlines()]
    assert [s["reason"] for s in skipped] == ["not_an_image"]

    # the same 4 samples every step: the loss is finite and falls
    losses = read_csv_log(out_a / "logs" / "metrics.csv", "loss")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(v) for v in losses.values())
    assert losses[6] < losses[1] - 0.05, losses

    # every trainable parameter moved
    saved = (load_file(out_a / "adapter" / "adapter_model.safetensors") if method == "lora"
             else result.model.state_dict())
    trainable = {n for n, p in initial.named_parameters() if p.requires_grad}
    assert trainable
    for name, value in before.items():
        if method == "full" and name not in trainable:
            continue
        assert not torch.equal(saved[name].float(), value.float()), f"{name} did not change"

    # save -> load -> the same logits
    reloaded = load_model(ModelConfig(name_or_path=str(out_a / weights))).model
    batch = _batch(load_model(ModelConfig(name_or_path=str(base))))
    torch.testing.assert_close(_logits(reloaded, batch), _logits(result.model, batch), atol=1e-5, rtol=1e-5)

    # resume from checkpoint-3 through the CLI: steps 4..6 log the losses of the uninterrupted run
    out_b = tmp_path / "b"
    ckpt = out_a / "checkpoints" / "checkpoint-3"
    assert (ckpt / COMPLETE_MARKER).is_file()
    rc = cli(["train", "--config", str(out_a / "config.yaml"), "--train.output_dir", str(out_b),
              "--train.resume", str(ckpt), "--train.save_steps", "0"])
    assert rc == 0
    resumed = read_csv_log(out_b / "logs" / "metrics.csv", "loss")
    assert sorted(resumed) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(losses[step], rel=1e-4, abs=1e-5), (step, resumed, losses)


def test_resume_latest_skips_incomplete_checkpoints(tmp_path):
    ckpts = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
    for step in (2, 4):
        (ckpts / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("{}")
    # checkpoint-6 was being written when the run died: no marker
    assert resolve_resume("latest", ckpts) == str(ckpts / "checkpoint-4")
    assert resolve_resume(None, ckpts) is None
    assert resolve_resume("latest", tmp_path / "nothing-yet") is None
    from texocr.errors import TexocrError

    with pytest.raises(TexocrError, match="not a complete texocr checkpoint"):
        resolve_resume(str(ckpts / "checkpoint-6"), ckpts)
    with pytest.raises(TexocrError, match="not a directory"):
        resolve_resume(str(tmp_path / "missing"), ckpts)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from texocr.cli import main as cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"train:\n  output_dir: {tmp_path / 'out'}\n")
    assert cli(["train", "--config", str(cfg)]) == 2
    assert "no training data" in capsys.readouterr().err
    assert cli(["train", "--config", str(cfg), "--train.lrr", "1"]) == 2
    assert "train.lrr" in capsys.readouterr().err


def test_periodic_generation_eval_and_early_stopping(tiny_model_dir, tmp_path):
    from texocr.sample import Sample
    from texocr.train import train

    samples = [Sample(_image(t), t, str(i)) for i, t in enumerate(LATEX)]
    cfg = _config(tiny_model_dir("qwen2_vl"), tmp_path, tmp_path / "run", "--train.max_steps", "10",
                  "--train.eval_steps", "1", "--train.early_stopping_patience", "1", "--eval.render", "false")
    result = train(cfg, train_samples=samples, val_samples=samples[:2])
    em = read_csv_log(tmp_path / "run" / "logs" / "metrics.csv", "eval_exact_match")
    # a random model matches nothing: step 2 does not improve on step 1, so patience 1 stops the run there
    assert result.steps == 2 and sorted(em) == [1, 2] and set(em.values()) == {0.0}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["n"] == 2 and metrics["exact_match"] == 0.0 and "cer" in metrics


def _open_mllama_gates(src: Path, dst: Path) -> Path:
    """A copy of the tiny Mllama whose cross-attention gates are open, as in a trained checkpoint.

    A fresh Mllama initializes the gates to 0 (tanh(0) = 0): nothing from the image reaches the text,
    so no gradient reaches the vision tower or the cross-attention projections, and LoRA there cannot move.
    """
    import shutil

    from transformers import MllamaForConditionalGeneration

    shutil.copytree(src, dst)
    model = MllamaForConditionalGeneration.from_pretrained(dst)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                p.fill_(1.0)
    model.save_pretrained(dst)
    return dst


FAMILIES = ["qwen2_5_vl", "qwen3_vl", "paligemma", "idefics3", "smolvlm", "mllama", "compact"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains(family, tiny_model_dir, tmp_path):
    """LoRA on language and vision towers: finite loss, every trainable parameter moved, adapter reloads."""
    from peft import get_peft_model_state_dict
    from transformers import set_seed

    from texocr.models.loading import load_model
    from texocr.sample import Sample
    from texocr.train import train

    samples = [Sample(_image(t), t, str(i)) for i, t in enumerate(LATEX[:2])]
    model_dir = tiny_model_dir(family)
    if family == "mllama":
        model_dir = _open_mllama_gates(model_dir, tmp_path / "mllama")
    steps = 2
    cfg = _config(model_dir, tmp_path, tmp_path / "run", "--train.max_steps", str(steps),
                  "--train.batch_size", "2", "--model.lora_scope", "vision_language", "--train.logging_steps", "1")
    set_seed(cfg.train.seed)
    before = {k: v.detach().clone() for k, v in get_peft_model_state_dict(load_model(cfg.model, training=True).model).items()}
    result = train(cfg, train_samples=samples)
    losses = read_csv_log(tmp_path / "run" / "logs" / "metrics.csv", "loss")
    assert len(losses) == steps and all(math.isfinite(v) for v in losses.values())
    after = get_peft_model_state_dict(result.model)
    assert before.keys() == after.keys() and before
    unchanged = [k for k in before if torch.equal(before[k], after[k].detach().cpu())]
    assert not unchanged, unchanged[:5]
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("name", ["ddp", "fsdp", "deepspeed_zero2"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import ClusterConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "accelerate" / f"{name}.yaml"
    cfg = ClusterConfig.from_yaml_file(path)
    assert cfg.distributed_type.value in ("MULTI_GPU", "FSDP", "DEEPSPEED")
    assert path.read_text().startswith("# texocr: accelerate launch --config_file configs/accelerate/")
