"""`train.method: grpo` (`texocr.grpo`) on tiny random models: the loss scores exactly the tokens that were sampled
(every family), group advantages, one step moves the trainable parameters (LoRA and full, with the KL term), a
step with nothing to prefer moves none, and `texocr train` runs end to end, writes the run layout and resumes."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from texocr.config import ModelConfig
from texocr.data.render import tex_available
from texocr.grpo import (
    GrpoLearner,
    GrpoSettings,
    answer_inputs,
    completion_mask,
    group_advantages,
    token_logprobs,
)
from texocr.models.loading import load_model
from texocr.rewards import Reward
from texocr.sample import Sample

LATEX = ["x^2", "a+b", r"\frac{1}{2}", "y_1"]


def _image(text: str, width: int = 64) -> Image.Image:
    im = Image.new("RGB", (width, 32), "white")
    ImageDraw.Draw(im).text((2, 8), text, fill="black")
    return im


def test_completion_mask_ends_at_the_first_end_token():
    ids = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9], [2, 0, 0, 0, 0]])
    assert completion_mask(ids, [2]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1],
                                                  [1, 0, 0, 0, 0]]


def test_group_advantages():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    adv = group_advantages(rewards)
    assert torch.allclose(adv.sum(dim=1), torch.zeros(2), atol=1e-6)
    assert adv[0].tolist() == sorted(adv[0].tolist()) and torch.equal(adv[1], torch.zeros(3))  # nothing to prefer
    assert torch.allclose(adv[0], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-3)  # divided by the group's std (1)
    assert torch.equal(group_advantages(rewards, scale=False)[0], torch.tensor([-1.0, 0.0, 1.0]))


@pytest.mark.parametrize("family", ["compact", "qwen2_vl", "qwen3_vl", "paligemma", "idefics3", "mllama"])
def test_loss_scores_exactly_what_was_sampled(family, tiny_model_dir):
    """The loss's log-probabilities of the answer tokens equal those `generate` sampled them from (temperature
    included), with prompts of different lengths (left padding) and each family's per-token inputs."""
    loaded = load_model(ModelConfig(name_or_path=str(tiny_model_dir(family))), device="cpu")
    rows = [im for im in (_image("x^2"), _image("a+b", 120)) for _ in range(2)]
    enc = loaded.family.encode_for_generation(loaded.processor, rows)
    gen = loaded.family.generation_kwargs(loaded.processor)
    torch.manual_seed(0)
    with torch.no_grad():
        out = loaded.model.generate(**enc, do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=5,
                                    output_scores=True, return_dict_in_generate=True, **gen)
        new = out.sequences[:, enc["input_ids"].shape[1]:]
        mask = completion_mask(new, gen["eos_token_id"])
        sampled = torch.stack([s.float().log_softmax(-1) for s in out.scores], 1)  # [R, N, V] at temperature 0.7
        sampled = sampled.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        ours = token_logprobs(loaded.model, answer_inputs(loaded, rows, new, mask), new, 0.7)
    assert ours.shape == new.shape
    torch.testing.assert_close(ours * mask, sampled * mask, atol=1e-4, rtol=1e-4)


def _crc_reward(preds, refs, *, raw=None):
    """A reward that varies from answer to answer of a random model (the real parts would score them all 0)."""
    return [Reward(float(zlib.crc32(r.encode()) % 5), {"crc": 0.0}) for r in raw]


def _learner(model_dir: Path, method: str, reward, beta: float = 0.0, drop_flat: bool = True):
    torch.manual_seed(0)
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), family="compact", method=method, lora_r=4,
                                    lora_alpha=8), training=True, device="cpu")
    settings = GrpoSettings(generations=4, max_new_tokens=6, beta=beta, micro_batch=3,  # 3: uneven micro-batches
                            drop_flat=drop_flat)
    params = [p for p in loaded.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)  # no decay: only a gradient moves a weight
    return GrpoLearner(loaded, settings, reward, optimizer)


def _samples() -> list[Sample]:
    return [Sample(_image(t), t, str(i)) for i, t in enumerate(LATEX[:2])]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_one_step_moves_the_trainable_parameters(method, tiny_model_dir):
    learner = _learner(tiny_model_dir("compact"), method, _crc_reward, beta=0.1)
    model = learner.loaded.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    numbers = learner.step([_samples()])
    assert numbers["reward_std"] > 0 and numbers["grad_norm"] > 0
    assert numbers["kl"] == pytest.approx(0.0, abs=1e-6)  # before the step the policy is its reference
    moved = {n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    if method == "lora":
        # lora_A has no gradient while lora_B is still 0 (peft's start): every lora_B moves
        expected = {n for n in before if "lora_B" in n}
    else:
        expected = set(before)
    assert expected and expected <= moved, sorted(expected - moved)[:5]
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert (method == "lora") == bool(frozen)


@pytest.mark.parametrize("sample_batch, calls", [(0, [8]), (3, [3, 3, 2])])
def test_sampling_runs_in_its_own_batches(tiny_model_dir, monkeypatch, sample_batch, calls):
    """Answers are sampled `sample_batch` rows per generate call (0: the whole step's 2 images x 4 answers in one
    call), whatever `micro_batch` (3) the loss pass uses."""
    learner = _learner(tiny_model_dir("compact"), "lora", _crc_reward)
    learner.settings.sample_batch = sample_batch
    model, sizes = learner.loaded.model, []
    real = model.generate

    def spy(*args, **kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    numbers = learner.step([_samples()])
    assert sizes == calls and numbers["grad_norm"] >= 0


def test_a_step_with_nothing_to_prefer_moves_nothing(tiny_model_dir):
    learner = _learner(tiny_model_dir("compact"), "lora", lambda p, r, *, raw=None: [Reward(1.0, {})] * len(p))
    before = {n: p.detach().clone() for n, p in learner.loaded.model.named_parameters() if p.requires_grad}
    numbers = learner.step([_samples()])
    assert numbers["zero_std_groups"] == 1.0 and numbers["loss"] == 0.0
    assert all(torch.equal(p, before[n]) for n, p in learner.loaded.model.named_parameters() if p.requires_grad)


def test_flat_groups_do_not_dilute_the_loss_of_the_groups_with_spread(tiny_model_dir):
    """`grpo_flat_groups: drop` (default) divides by the tokens of the groups whose answers differ in reward;
    `count` by every sampled token: the same gradient direction, scaled by their ratio."""
    first = LATEX[0]

    def half_flat(preds, refs, *, raw=None):  # the first image's answers all score 1, the second's vary
        return [Reward(1.0, {}) if ref == first else _crc_reward([p], [ref], raw=[r])[0]
                for p, ref, r in zip(preds, refs, raw)]

    drop = _learner(tiny_model_dir("compact"), "lora", half_flat).step([_samples()])
    count = _learner(tiny_model_dir("compact"), "lora", half_flat, drop_flat=False).step([_samples()])
    assert drop["zero_std_groups"] == count["zero_std_groups"] == 0.5
    assert 0 < drop["spread_tokens"] < drop["answer_tokens"] == count["answer_tokens"]
    assert drop["loss"] != 0
    assert drop["loss"] == pytest.approx(count["loss"] * drop["answer_tokens"] / drop["spread_tokens"], rel=1e-4)


# ---------------------------------------------------------------- texocr train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grpo-data")
    rows = []
    for i, latex in enumerate(LATEX):
        _image(latex).save(root / f"{i}.png")
        rows.append({"image": f"{i}.png", "latex": latex})
    (root / "labels.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _cli_args(data: Path, out: Path) -> list[str]:
    parts = "[image:1, valid:0.25, edit:0.5, length:0.25]" if tex_available() else "[valid:0.25, edit:0.5, length:0.25]"
    return ["train", "--config", "configs/compact/grpo.yaml", "--model.init_size", "tiny",
            "--data.train", str(data), "--data.val", str(data), "--data.val_limit", "2",
            "--train.output_dir", str(out), "--train.max_steps", "2", "--train.batch_size", "2",
            "--train.grpo_generations", "3", "--train.grpo_max_new_tokens", "6", "--train.logging_steps", "1",
            "--train.save_steps", "1", "--train.lr", "0.01", "--train.reward_parts", parts,
            "--train.reward_workers", "1", "--eval.max_new_tokens", "4", "--eval.batch_size", "2"]


@pytest.fixture(scope="module")
def smoke_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from texocr.cli import main as cli

    out = tmp_path_factory.mktemp("grpo-run") / "run"
    root = Path(__file__).resolve().parents[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # the config path is relative to the repository
        assert cli(_cli_args(data_dir, out)) == 0
    return out


def test_texocr_train_grpo_writes_the_run_layout(smoke_run):
    from texocr.config import load_config
    from texocr.train_callbacks import COMPLETE_MARKER, read_csv_log

    out = smoke_run
    for name in ("config.yaml", "metrics.json", "loss_curve.png", "logs/metrics.csv", "adapter/adapter_config.json",
                 "adapter/processor_config.json", f"checkpoints/checkpoint-2/{COMPLETE_MARKER}"):
        assert (out / name).is_file(), name
    assert list((out / "logs").glob("events.out.tfevents.*"))
    assert load_config(out / "config.yaml").train.method == "grpo"
    rewards = read_csv_log(out / "logs" / "metrics.csv", "reward")
    assert sorted(rewards) == [1, 2]
    parts = {"valid", "edit", "length"} | ({"image"} if tex_available() else set())
    for part in parts:
        assert sorted(read_csv_log(out / "logs" / "metrics.csv", f"reward_{part}")) == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and "exact_match" in metrics and metrics["train_samples"] == 4
    # the adapter loads back onto its base (the fresh model in init/) like any other adapter
    from texocr.infer import Recognizer

    rec = Recognizer.load(str(out / "init"), adapter=str(out / "adapter"), max_new_tokens=4)
    assert isinstance(rec(_image("x")), str)


def test_texocr_train_grpo_resumes(smoke_run, data_dir, tmp_path):
    """From checkpoint-1, step 2 samples, scores and updates as the uninterrupted run did."""
    from texocr.cli import main as cli
    from texocr.train_callbacks import read_csv_log

    out = tmp_path / "resumed"
    args = _cli_args(data_dir, out) + ["--train.resume", str(smoke_run / "checkpoints" / "checkpoint-1"),
                                       "--data.val", "[]"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(Path(__file__).resolve().parents[1])
        assert cli(args) == 0
    for name in ("loss", "reward", "answer_tokens"):
        resumed = read_csv_log(out / "logs" / "metrics.csv", name)
        first = read_csv_log(smoke_run / "logs" / "metrics.csv", name)
        assert sorted(resumed) == [2]
        assert resumed[2] == pytest.approx(first[2], rel=1e-4, abs=1e-6), name


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_qwen_vl_families_train_with_grpo(family, tiny_model_dir, tmp_path):
    """Through `texocr.train.train`: LoRA with the KL term (the base under the adapter as reference)."""
    from texocr.config import load_config
    from texocr.train import train

    cfg = load_config(None, [
        "--model.name_or_path", str(tiny_model_dir(family)), "--model.lora_r", "4", "--train.method", "grpo",
        "--train.output_dir", str(tmp_path / "run"), "--train.max_steps", "2", "--train.batch_size", "2",
        "--train.grpo_generations", "3", "--train.grpo_max_new_tokens", "5", "--train.grpo_beta", "0.05",
        "--train.lr", "0.01", "--train.logging_steps", "1", "--train.reward_parts", "[valid:0.5, edit:1, length:0.5]",
        "--eval.max_new_tokens", "4"])
    samples = [Sample(_image(t), t, str(i)) for i, t in enumerate(LATEX)]
    result = train(cfg, train_samples=samples, val_samples=samples[:2])
    assert result.steps == 2 and result.metrics["n"] == 2
    steps = [h for h in result.log_history if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2] and steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
