"""`train.method: grpo`: reinforcement fine-tuning from a render reward (GRPO), for every family, LoRA or full.

    texocr train --config configs/compact/grpo.yaml
    texocr train --config configs/qwen2_vl/7b-lora.yaml --train.method grpo --train.grpo_generations 8

Each optimizer step, for `train.batch_size` images (x `train.grad_accum`):

1. sample `grpo_generations` answers per image at `grpo_temperature` (`model.generate`, the family's prompt and
   image budget: `Family.encode_for_generation`);
2. score each against the image's label (`texocr.rewards`: rendered-image match, valid LaTeX, edit score,
   length penalty, weighted by `train.reward_parts`);
3. advantage = reward minus its group's mean (divided by the group's standard deviation, `grpo_scale_rewards`);
4. loss = -advantage x log-probability of each sampled token (+ `grpo_beta` x KL to the starting model), over
   all sampled tokens of the step; one optimizer step.

Why a loop of its own and not TRL's `GRPOTrainer` (trl 1.16 installs beside transformers 5.25; its source was read):
TRL builds prompts from chat messages through the processor's chat template and rebuilds each model's extra
per-token inputs itself (`token_type_ids`, `mm_token_type_ids`; it has nothing for Mllama's cross-attention
mask). texocr's families already own all of this (`texocr.models.base.Family`: the compact model's image-only
prompt, PaliGemma's prefix / answer `token_type_ids`, Mllama's cross-attention mask, the image budget), and
`load_model` already prepares full / LoRA / QLoRA. Going through TRL would duplicate that per family; the loop
below is small because the family does the encoding.

The policy gradient is computed on exactly the sampled tokens: the training sequence is the generation
prompt (left-padded, as `generate` saw it) followed by the sampled ids, each answer token carrying the per-token
values the family's training encoding gives answers (`Family.answer_token_values`). Re-encoding the decoded text
through the `Collator` instead would train a different tokenization of a sample now and then (a BPE text has
more than one) and an end token that an answer cut at `grpo_max_new_tokens` never sampled. One optimizer step per
batch of samples (on-policy), so GRPO's probability ratio is 1 and its clipping never acts: the loss is the
plain advantage-weighted log-likelihood, normalized by the step's sampled tokens (token-level, as DAPO: a long
answer's tokens count as much as a short one's).

Single process only (no `accelerate launch` / torchrun yet). Output: the layout of `texocr train`
(`texocr.train`): config.yaml, adapter/ or model/, logs/ (metrics.csv + TensorBoard), metrics.json,
loss_curve.png, checkpoints/checkpoint-N/ (resumable with `--train.resume latest`, marked complete last).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from texocr.errors import TexocrError

if TYPE_CHECKING:
    import torch

    from texocr.config import Config, ModelConfig, TrainConfig
    from texocr.models.loading import LoadedModel
    from texocr.rewards import Reward
    from texocr.sample import Sample

log = logging.getLogger("texocr.grpo")

RewardFn = Callable[..., "list[Reward]"]
"""`(preds, refs, *, raw) -> list[Reward]`: `texocr.rewards.RewardFunction` or a stand-in (tests)."""

UNBOUNDED_STEPS = 10**12
"""Steps of a stream bounded by `train.max_minutes` only (the schedulers need a number)."""


# ---------------------------------------------------------------- sampling and the loss batch


@dataclass
class GrpoSettings:
    """The GRPO keys of `TrainConfig`, resolved."""

    generations: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 128
    beta: float = 0.0
    scale_rewards: bool = True
    micro_batch: int = 0
    """Sequences per forward-backward call (0: all of a batch at once)."""
    sample_batch: int = 0
    """Sequences per generate call (0: all of a batch at once). Apart from `micro_batch`: sampling keeps no
    activations for a backward pass, so it affords far larger batches, and each call costs a full decode loop
    (sampling 64 answers of a random Qwen2-VL-7B 16 at a time was 93 % of the step: bench/grpo.md)."""
    drop_flat: bool = True
    """Normalize the loss over the tokens of groups with reward spread only (`train.grpo_flat_groups: drop`)."""

    @classmethod
    def from_config(cls, t: TrainConfig, default_new_tokens: int) -> GrpoSettings:
        if t.grpo_generations < 2:
            raise TexocrError(f"train.grpo_generations must be >= 2 (a group of one has no advantage), "
                              f"got {t.grpo_generations}")
        if t.grpo_temperature <= 0:
            raise TexocrError(f"train.grpo_temperature must be > 0, got {t.grpo_temperature}")
        if t.grpo_beta < 0 or t.grpo_micro_batch < 0 or t.grpo_sample_batch < 0:
            raise TexocrError("train.grpo_beta, train.grpo_micro_batch and train.grpo_sample_batch must be >= 0")
        new_tokens = t.grpo_max_new_tokens or default_new_tokens
        if t.grpo_flat_groups not in ("count", "drop"):
            raise TexocrError(f"train.grpo_flat_groups must be count or drop, not {t.grpo_flat_groups!r}")
        return cls(t.grpo_generations, t.grpo_temperature, new_tokens, t.grpo_beta, t.grpo_scale_rewards,
                   t.grpo_micro_batch, t.grpo_sample_batch, t.grpo_flat_groups == "drop" and t.grpo_beta == 0)


def _chunks(n: int, size: int) -> list[slice]:
    size = size if size > 0 else max(n, 1)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _model_inputs(loaded: LoadedModel, enc: Any) -> dict[str, Any]:
    """An encoding on the model's device, floats in the model's dtype (as `Recognizer` feeds generate)."""
    dtype = next(loaded.model.parameters()).dtype
    return {k: (v.to(loaded.device, dtype) if v.is_floating_point() else v.to(loaded.device))
            for k, v in enc.items() if hasattr(v, "to")}


def _per_token_keys(enc: Any) -> list[str]:
    """Processor outputs with one value per text token besides ids and mask (`Family.encode`'s test)."""
    import torch

    ids = enc["input_ids"]
    return [k for k, v in enc.items() if k not in ("input_ids", "attention_mask") and isinstance(v, torch.Tensor)
            and v.dim() >= 2 and tuple(v.shape[:2]) == tuple(ids.shape)]


def completion_mask(new_ids: torch.Tensor, eos_ids: Sequence[int]) -> torch.Tensor:
    """[R, N] 1 on each answer's tokens up to and including its first end token, 0 on the padding after it
    (all 1 for an answer cut at the token limit)."""
    import torch

    is_end = torch.isin(new_ids, torch.tensor(list(eos_ids), device=new_ids.device))
    n = new_ids.shape[1]
    first = torch.where(is_end.any(dim=1), is_end.int().argmax(dim=1), torch.full_like(new_ids[:, 0], n))
    return (torch.arange(n, device=new_ids.device)[None, :] <= first[:, None]).long()


def sample_answers(loaded: LoadedModel, images: list[Any], settings: GrpoSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one answer per image row: new ids [R, N] (padded after the end token) and their `completion_mask`.

    Pure sampling at `temperature` (no top-k / top-p cut): the loss assumes softmax(logits / temperature) is the
    distribution the tokens came from.
    """
    import torch

    family, processor, model = loaded.family, loaded.processor, loaded.model
    gen_kwargs = family.generation_kwargs(processor)
    rows: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for part in _chunks(len(images), settings.sample_batch):
                enc = _model_inputs(loaded, family.encode_for_generation(processor, images[part]))
                out = model.generate(**enc, do_sample=True, temperature=settings.temperature, top_k=0, top_p=1.0,
                                     max_new_tokens=settings.max_new_tokens, use_cache=True, **gen_kwargs)
                rows.extend(out[:, enc["input_ids"].shape[1]:].cpu())
    finally:
        model.train(was_training)
    width = max(r.shape[0] for r in rows)
    new_ids = torch.full((len(rows), width), gen_kwargs["pad_token_id"], dtype=torch.long)
    for i, r in enumerate(rows):
        new_ids[i, : r.shape[0]] = r
    return new_ids, completion_mask(new_ids, gen_kwargs["eos_token_id"])


def answer_inputs(loaded: LoadedModel, images: list[Any], new_ids: torch.Tensor,
                  mask: torch.Tensor) -> dict[str, Any]:
    """Model inputs for prompt + sampled answer, one row per image: the generation prompt (left-padded, with
    its pixel tensors) followed by `new_ids` [R, N], attended where `mask` is 1. Per-token processor outputs
    continue over the answer with the family's answer values (`Family.encode`'s rule)."""
    import torch

    family = loaded.family
    enc = family.encode_for_generation(loaded.processor, images)
    ids, attn = enc["input_ids"], enc["attention_mask"]  # [R, P], left-padded
    n = new_ids.shape[1]
    data: dict[str, Any] = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    for k in _per_token_keys(enc):
        v = enc[k]
        if k in family.answer_token_values:
            tail = v.new_full((v.shape[0], n, *v.shape[2:]), family.answer_token_values[k])
        else:  # the last prompt position's value (left padding: the last column is a real token)
            tail = v[:, -1:].expand(v.shape[0], n, *v.shape[2:])
        data[k] = torch.cat([v, tail], dim=1)
    data["input_ids"] = torch.cat([ids, new_ids.to(ids.dtype)], dim=1)
    data["attention_mask"] = torch.cat([attn, mask.to(attn.dtype)], dim=1)
    return _model_inputs(loaded, data)


def _keeps_logits(model: Any) -> bool:
    """Does the model's forward take `logits_to_keep` (logits of the last positions only: less memory)?"""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def token_logprobs(model: Any, inputs: dict[str, Any], new_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token | everything before it) at `temperature` for each answer token: [R, N] float32."""
    import torch

    n = new_ids.shape[1]
    extra = {"logits_to_keep": n + 1} if _keeps_logits(model) else {}
    logits = model(**inputs, use_cache=False, **extra).logits  # [R, T or n + 1, V]
    logits = logits[:, -(n + 1): -1].float() / temperature  # position t predicts token t + 1: [R, n, V]
    ids = new_ids.to(logits.device)
    return logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def group_advantages(rewards: torch.Tensor, *, scale: bool = True) -> torch.Tensor:
    """[B, G] rewards -> advantages: minus the group mean, divided by the group's standard deviation if `scale`.
    A group whose answers all scored the same gets 0: nothing to prefer."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    return centered / (rewards.std(dim=1, keepdim=True) + 1e-4) if scale else centered


# ---------------------------------------------------------------- one step


class GrpoLearner:
    """The policy, its optimizer, a reward and (for `beta > 0`) a reference: `step` is one optimizer step.

    The KL reference is the starting model. LoRA: the base under the adapter (peft's `disable_adapter`), no
    copy needed, unless training continues an adapter (`model.adapter`); then, and for full training, a frozen
    copy made here (memory: one more model).
    """

    def __init__(self, loaded: LoadedModel, settings: GrpoSettings, reward: RewardFn, optimizer: Any, *,
                 scheduler: Any = None, max_grad_norm: float = 1.0, autocast: Callable[[], Any] | None = None,
                 target: Callable[[str], str] = str.strip, glyph_height: float | None = None) -> None:
        self.loaded, self.settings, self.reward = loaded, settings, reward
        self.glyph_height = glyph_height  # images enlarged as the Recognizer enlarges them (`data.glyph_height`)
        self.optimizer, self.scheduler, self.max_grad_norm = optimizer, scheduler, max_grad_norm
        self.autocast = autocast or contextlib.nullcontext
        self.target = target
        self.reference: Any = None
        self._use_base = False
        if settings.beta > 0:
            model = loaded.model
            if hasattr(model, "disable_adapter") and not loaded.adapter:
                self._use_base = True
            else:
                self.reference = copy.deepcopy(model).eval()
                for p in self.reference.parameters():
                    p.requires_grad_(False)

    def _reference_logprobs(self, inputs: dict[str, Any], new_ids: torch.Tensor) -> torch.Tensor:
        import torch

        with torch.no_grad(), self.autocast():
            if self._use_base:
                with self.loaded.model.disable_adapter():
                    return token_logprobs(self.loaded.model, inputs, new_ids, self.settings.temperature)
            return token_logprobs(self.reference, inputs, new_ids, self.settings.temperature)

    def step(self, batches: Sequence[Sequence[Sample]]) -> dict[str, float]:
        """One optimizer step over `batches` (gradients accumulated): sample, score, backpropagate, update.
        Returns this step's numbers (loss, reward and its parts, answer length, KL, timings)."""
        import torch

        model = self.loaded.model
        model.train()
        self.optimizer.zero_grad(set_to_none=True)
        logs: dict[str, list[float]] = {}
        for samples in batches:
            for k, v in self._accumulate(samples, len(batches)).items():
                logs.setdefault(k, []).append(v)
        params = [p for p in model.parameters() if p.requires_grad]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm if self.max_grad_norm > 0 else math.inf)
        self.optimizer.step()  # parameters without a gradient (every advantage 0) are left alone
        if self.scheduler is not None:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        out = {k: sum(v) / len(v) for k, v in logs.items()}
        out["loss"] = sum(logs["loss"])  # each batch's share is already divided by the number of batches
        out["grad_norm"] = float(grad_norm)
        out["learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
        return out

    def _accumulate(self, samples: Sequence[Sample], n_batches: int) -> dict[str, float]:
        """Sample, score and backpropagate one batch of images (its loss divided by `n_batches`)."""
        import torch

        from texocr.data.collate import sized_as_read
        from texocr.infer import clean_output
        from texocr.models.base import INSTRUCTION

        s, loaded = self.settings, self.loaded
        g = s.generations
        images = [sized_as_read(smp.image, self.glyph_height) for smp in samples]
        rows = [im for im in images for _ in range(g)]  # row i * g + j: answer j to image i
        t0 = time.perf_counter()
        with self.autocast():
            new_ids, mask = sample_answers(loaded, rows, s)
        t1 = time.perf_counter()
        raw = loaded.family.decode(loaded.processor, new_ids)
        preds = [clean_output(r, prompt=INSTRUCTION) for r in raw]  # what `texocr predict` would answer
        refs = [self.target(smp.latex) for smp in samples for _ in range(g)]
        rewards = self.reward(preds, refs, raw=raw)
        t2 = time.perf_counter()
        totals = torch.tensor([r.total for r in rewards], dtype=torch.float32).view(len(samples), g)
        adv = group_advantages(totals, scale=s.scale_rewards).view(-1)  # [R]
        tokens = float(mask.sum())
        spread = (totals.std(dim=1) > 0).repeat_interleave(g)  # [R]: the row's group has answers that differ
        spread_tokens = float(mask[spread].sum())
        # the loss's denominator: every sampled token, or (drop_flat) those of the groups that teach something
        norm = spread_tokens if s.drop_flat else tokens
        # with no KL term a row of advantage 0 adds nothing to the loss: skip its forward and backward pass
        rows_used = [i for i in range(len(rows)) if s.beta > 0 or adv[i] != 0]
        loss_sum = kl_sum = 0.0
        for part in _chunks(len(rows_used), s.micro_batch):
            idx = rows_used[part]
            ids, m = new_ids[idx], mask[idx]
            width = int(m.sum(dim=1).max())  # trailing columns that are padding in every row go
            ids, m = ids[:, :width], m[:, :width]
            inputs = answer_inputs(loaded, [rows[i] for i in idx], ids, m)
            m = m.to(loaded.device).float()
            a = adv[idx].to(loaded.device)
            with self.autocast():
                logp = token_logprobs(loaded.model, inputs, ids, s.temperature)  # [r, n]
            per_token = -a[:, None] * logp
            if s.beta > 0:
                delta = self._reference_logprobs(inputs, ids) - logp
                kl = torch.exp(delta) - delta - 1  # k3 estimate of KL(policy || reference), >= 0
                per_token = per_token + s.beta * kl
                kl_sum += float((kl.detach() * m).sum())
            loss = (per_token * m).sum() / max(norm, 1.0) / n_batches
            loss.backward()
            loss_sum += float(loss.detach())
        t3 = time.perf_counter()
        out: dict[str, float] = {
            "loss": loss_sum,
            "reward": float(totals.mean()),
            "reward_std": float(totals.std(dim=1).mean()),
            "zero_std_groups": float((totals.std(dim=1) == 0).float().mean()),
            "answer_tokens": tokens / len(rows),
            "spread_tokens": spread_tokens / len(rows),  # the part of them in groups with spread
            "sample_seconds": t1 - t0, "reward_seconds": t2 - t1, "loss_seconds": t3 - t2,
        }
        for name in rewards[0].parts if rewards else ():
            out[f"reward_{name}"] = sum(r.parts[name] for r in rewards) / len(rewards)
        if s.beta > 0:
            out["kl"] = kl_sum / max(tokens, 1.0)
        return out


# ---------------------------------------------------------------- the run


def _check(cfg: Config) -> None:
    t = cfg.train
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TexocrError("train.method grpo runs in one process; launch it without accelerate/torchrun")
    if t.scheduler == "cosine_time":
        raise TexocrError("train.method grpo: train.scheduler cosine_time is not supported; use cosine, linear "
                          "or constant")
    if not t.optim.startswith("adamw"):
        raise TexocrError(f"train.method grpo uses AdamW; train.optim {t.optim!r} is not supported")
    if t.batch_size < 1 or t.grad_accum < 1:
        raise TexocrError("train.batch_size and train.grad_accum must be >= 1")
    if t.early_stopping_patience > 0:
        log.warning("train.early_stopping_patience is not used by train.method grpo")


def _autocast(precision: str, device: str) -> Callable[[], Any]:
    """`train.precision` as an autocast context: bf16 (`auto` on a GPU that has it) or none."""
    import torch

    cuda = str(device).startswith("cuda")
    if precision == "fp16":
        raise TexocrError("train.method grpo: precision fp16 is not supported (no loss scaling); use bf16 or no")
    if precision == "bf16" and not cuda:
        raise TexocrError("train.precision=bf16 needs a CUDA GPU; use 'auto' or 'no' on a CPU")
    if precision == "bf16" or (precision == "auto" and cuda and torch.cuda.is_bf16_supported()):
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _sample_stream(samples: list[Sample] | None, cfg: Config, skip: int) -> Iterator[Sample]:
    """Training samples forever: a list epoch after epoch, each in a seeded order (`skip` of them passed over
    on resume), or the `data.streaming` stream moved on by `skip`."""
    if samples is None:
        from texocr.data.stream import TrainStream

        yield from TrainStream(cfg.data, offset=skip)
        return
    epoch, n = 0, len(samples)
    while True:
        order = list(range(n))
        random.Random(f"grpo:{cfg.train.seed}:{epoch}").shuffle(order)
        for i in order:
            if skip > 0:
                skip -= 1
                continue
            yield samples[i]
        epoch += 1


def _total_steps(cfg: Config, n_samples: int | None) -> int:
    """`train.max_steps`, else `train.epochs` over the samples; a stream bounded by minutes only: unbounded."""
    t = cfg.train
    if t.max_steps > 0:
        return t.max_steps
    if n_samples is None:
        if t.max_minutes > 0:
            return UNBOUNDED_STEPS
        raise TexocrError("a stream has no length: set train.max_steps or train.max_minutes")
    return max(1, math.ceil(t.epochs * n_samples / (t.batch_size * t.grad_accum)))


def _trainable(model: Any) -> dict[str, Any]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(folder: Path, learner: GrpoLearner, state: dict[str, Any], *, keep: int | None) -> None:
    """Trainable weights, optimizer, scheduler, RNG and `state` (step, seconds); the completion marker last."""
    import torch

    from texocr.train_callbacks import COMPLETE_MARKER, complete_checkpoints

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({n: p.detach().cpu() for n, p in _trainable(learner.loaded.model).items()}, folder / "trainable.pt")
    torch.save(learner.optimizer.state_dict(), folder / "optimizer.pt")
    if learner.scheduler is not None:
        torch.save(learner.scheduler.state_dict(), folder / "scheduler.pt")
    rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(rng, folder / "rng.pt")
    (folder / "grpo_state.json").write_text(json.dumps(state) + "\n")
    (folder / COMPLETE_MARKER).write_text(json.dumps({"step": state["step"]}) + "\n")
    if keep:
        for old in complete_checkpoints(folder.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, learner: GrpoLearner) -> dict[str, Any]:
    """Restore what `save_checkpoint` wrote; returns its state."""
    import torch

    weights = torch.load(folder / "trainable.pt", map_location="cpu")
    params = _trainable(learner.loaded.model)
    if set(weights) != set(params):
        raise TexocrError(f"train.resume: {folder} holds other trainable parameters than this model "
                          f"({len(weights)} vs {len(params)}): a different model or method?")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
    learner.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu"))
    if learner.scheduler is not None and (folder / "scheduler.pt").is_file():
        learner.scheduler.load_state_dict(torch.load(folder / "scheduler.pt"))
    rng = torch.load(folder / "rng.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return json.loads((folder / "grpo_state.json").read_text())


class _Logs:
    """logs/metrics.csv (through `CsvLogger`), TensorBoard events in logs/, and the in-memory history."""

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        from texocr.train_callbacks import CsvLogger

        self.csv = CsvLogger(folder / "metrics.csv")
        self.tb = SummaryWriter(str(folder))
        self.history: list[dict[str, Any]] = []

    def log(self, step: int, epoch: float, values: dict[str, float]) -> None:
        state = SimpleNamespace(is_world_process_zero=True, global_step=step, epoch=epoch)
        self.csv.on_log(None, state, None, logs=values)
        for k, v in values.items():
            self.tb.add_scalar(k if k.startswith("eval_") else f"train/{k}", v, step)
        self.history.append({**values, "step": step, "epoch": epoch})

    def close(self) -> None:
        self.tb.close()


@dataclass
class GrpoRun:
    """What `train_grpo` returns; `texocr.train.train` hands it on as its `TrainResult` (the same fields)."""

    output_dir: Path
    steps: int
    metrics: dict[str, float]
    log_history: list[dict[str, Any]]
    model: Any
    """The trained model (a PeftModel for LoRA/QLoRA), still in memory."""


def train_grpo(cfg: Config, *, train_samples: list[Sample] | None, val_samples: list[Sample] | None,
               read_data: Callable[..., tuple[bool, list[Sample] | None, list[Sample]]],
               initial_model: Callable[[Config, Path], ModelConfig],
               ) -> GrpoRun:
    """`texocr train` with `train.method: grpo` (see the module docstring), called by `texocr.train.train`.

    `train_samples` / `val_samples` replace the `cfg.data` sources when given. `read_data` and
    `initial_model` are `texocr.train`'s data reading and model start (a fresh or grown compact model), passed
    in so that both methods share them: importing `texocr.train` from here would close an import circle.
    """
    import torch
    from transformers import get_scheduler, set_seed

    from texocr.config import save_config
    from texocr.data.collate import training_target
    from texocr.models import qwen_speed
    from texocr.models.lengths import fit_to_length
    from texocr.models.loading import load_model, trainable_parameters
    from texocr.rewards import RewardFunction
    from texocr.train_callbacks import plot_loss, resolve_resume, score_samples

    _check(cfg)
    t = cfg.train
    out = Path(t.output_dir)
    resume = resolve_resume(t.resume, out / "checkpoints")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    set_seed(t.seed)

    stream, train_samples, val_samples = read_data(cfg, out, train_samples, val_samples)

    loaded = load_model(initial_model(cfg, out), training=True)
    log.info("%s (%s, %s)", trainable_parameters(loaded.model)["summary"], loaded.family.name,
             cfg.model.method)
    if cfg.model.batch_vision_attention and qwen_speed.supports(loaded.family.name):
        qwen_speed.batch_vision_attention()  # as `texocr train` does (its worker-side collation is for the Trainer)
    length_fit = None
    if not stream:
        assert train_samples is not None
        train_samples, length_fit = fit_to_length(train_samples, loaded.family, loaded.processor,
                                                  cfg.model.max_length, target=training_target)
        (log.warning if length_fit.dropped else log.info)(length_fit.summary())
        if not train_samples:
            raise TexocrError(f"every training sample is longer than model.max_length={cfg.model.max_length}")

    settings = GrpoSettings.from_config(t, cfg.eval.max_new_tokens)
    total = _total_steps(cfg, None if stream else len(train_samples or []))
    params = list(_trainable(loaded.model).values())
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, t.adam_beta2))
    warmup = int(t.warmup_ratio) if t.warmup_ratio >= 1 else int(t.warmup_ratio * total)
    if total == UNBOUNDED_STEPS and t.warmup_ratio < 1:  # a share of "unbounded" would warm up forever
        warmup = 0
    scheduler = get_scheduler(t.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    reward = RewardFunction.from_config(t)
    learner = GrpoLearner(loaded, settings, reward, optimizer, scheduler=scheduler, max_grad_norm=t.max_grad_norm,
                          autocast=_autocast(t.precision, loaded.device), target=training_target,
                          glyph_height=cfg.data.glyph_height)
    step, done_seconds = 0, 0.0
    if resume:
        state = load_checkpoint(Path(resume), learner)
        step, done_seconds = int(state["step"]), float(state["seconds"])
        log.info("train.resume=%s: resuming GRPO from %s (step %d)", t.resume, resume, step)
    per_step = t.batch_size * t.grad_accum
    samples = _sample_stream(None if stream else train_samples, cfg, step * per_step)
    logs = _Logs(out / "logs")
    log.info("grpo: %s steps of %d images x %d answers, reward %s",
             "unbounded (train.max_minutes)" if total == UNBOUNDED_STEPS else total, per_step,
             settings.generations, reward.weights)

    start = time.monotonic()
    window: dict[str, list[float]] = {}
    n_train = None if stream else len(train_samples or [])
    try:
        while step < total:
            batches = [[next(samples) for _ in range(t.batch_size)] for _ in range(t.grad_accum)]
            numbers = learner.step(batches)
            step += 1
            for k, v in numbers.items():
                window.setdefault(k, []).append(v)
            epoch = step * per_step / n_train if n_train else 0.0
            if step == 1 or step % max(t.logging_steps, 1) == 0 or step == total:
                logs.log(step, epoch, {k: sum(v) / len(v) for k, v in window.items()})
                log.info("step %d/%d: reward %.3f, loss %.4f", step, total, numbers["reward"], numbers["loss"])
                window = {}
            if val_samples and t.eval_steps > 0 and step % t.eval_steps == 0 and step < total:
                periodic = score_samples(loaded, val_samples, _no_render(cfg.eval))
                logs.log(step, epoch, {f"eval_{k}": v for k, v in periodic.items()})
            minutes_up = t.max_minutes > 0 and time.monotonic() - start >= t.max_minutes * 60
            if t.save_steps > 0 and (step % t.save_steps == 0 or minutes_up):
                save_checkpoint(out / "checkpoints" / f"checkpoint-{step}", learner,
                                {"step": step, "seconds": round(done_seconds + time.monotonic() - start, 3)},
                                keep=t.save_total_limit)
            if minutes_up:
                log.info("train.max_minutes=%g reached at step %d: stopping", t.max_minutes, step)
                break
    finally:
        reward.close()
        logs.close()

    metrics: dict[str, float] = {"n": 0.0}
    if val_samples:
        metrics = score_samples(loaded, val_samples, cfg.eval)
    if length_fit is not None:
        metrics.update(length_fit.as_metrics())
    metrics["train_seconds"] = round(done_seconds + time.monotonic() - start, 1)
    if torch.cuda.is_available() and str(loaded.device).startswith("cuda"):  # as `texocr train`'s metrics.json
        metrics["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    final = out / ("model" if cfg.model.method == "full" else "adapter")
    loaded.model.save_pretrained(str(final))  # a PeftModel saves only its adapter
    loaded.processor.save_pretrained(str(final))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_loss(logs.history, out / "loss_curve.png")
    return GrpoRun(out, step, metrics, logs.history, loaded.model)


def _no_render(eval_cfg: Any) -> Any:
    """Periodic evaluations skip rendering (image_match), as `texocr train`'s do: exact match is what they show."""
    from dataclasses import replace

    return replace(eval_cfg, render=False)
