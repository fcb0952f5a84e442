"""`texocr train`: the one training path for full fine-tuning, LoRA and QLoRA, on the Hugging Face Trainer.

    texocr train --config configs/tiny/cpu-lora.yaml                       # a few minutes on a laptop CPU
    texocr train --config configs/qwen2_vl/7b-lora.yaml --train.lr 1e-4    # dotted overrides
    texocr train --config ... --train.resume latest                        # continue from the newest checkpoint
    accelerate launch --config_file configs/accelerate/ddp.yaml -m texocr train --config ...   # several GPUs

The three methods differ only in how `texocr.models.load_model(cfg.model, training=True)` prepares the
model; data, batching, loop, evaluation and saving are shared. The compact model's pretraining is this same
path (configs/compact/pretrain.yaml): `data.streaming` trains on an endless stream (`texocr.data.stream`:
renders with a replay pool, real images mixed in) instead of a list in memory, `model.init_size`/`model.grow`
start from a fresh or deepened compact model, `train.scheduler: cosine_time` spreads the learning rate over
`train.budget_minutes` of wall time across resumed commands, and the Qwen2-VL speed-ups
(`texocr.models.qwen_speed`: collation in the workers, uint8 pixels normalized on the GPU, one vision
attention call per layer) are on where the model allows them. Output (`train.output_dir`):

    config.yaml      the resolved config            checkpoints/   checkpoint-N/ (resumable, marked complete)
    adapter/|model/  final weights + processor      logs/          TensorBoard events + metrics.csv
    metrics.json     final evaluation, and how many training samples were longer than model.max_length
                     (train_dropped_too_long, train_longest_sequence)   loss_curve.png
    skipped.jsonl    rows of the data that could not be used (when any)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    from texocr.config import Config, DataConfig, ModelConfig, TrainConfig
    from texocr.models.loading import LoadedModel
    from texocr.sample import Sample, Skipped

log = logging.getLogger("texocr.train")


# ---------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE",
                        help="a YAML config (configs/<family>/<size>-<method>.yaml)")
    parser.epilog = ("Any config key can be overridden: --train.lr 1e-4 --model.method full "
                     "--data.train DIR --train.resume latest")
    parser.set_defaults(_accepts_overrides=True)


def main(args: argparse.Namespace) -> int:
    from texocr.config import load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    em = result.metrics.get("exact_match")
    print(f"trained {result.steps} steps -> {result.output_dir}"
          + (f"; val exact match {em:.3f} on {int(result.metrics.get('n', 0))} samples" if em is not None else ""))
    return 0


# ---------------------------------------------------------------- data


def read_samples(specs: list[str], data_cfg: DataConfig, *, split: str | None, limit: int | None,
                 skipped: list[Skipped]) -> list[Sample]:
    """Every usable Sample of `specs` (at most `limit`); rows that fail are added to `skipped`."""
    from texocr.data.sources import open_source

    out: list[Sample] = []
    for spec in specs:
        source = open_source(spec, data_cfg, split=split)
        for sample in source:
            if limit is not None and len(out) >= limit:
                break
            out.append(sample)
        skipped.extend(source.skipped)
        if limit is not None and len(out) >= limit:
            break
    return out


def read_data(cfg: Config, out: Path, train_samples: list[Sample] | None, val_samples: list[Sample] | None, *,
              write: bool = True) -> tuple[bool, list[Sample] | None, list[Sample]]:
    """`(stream, train_samples, val_samples)` of a run: samples given by the caller win over `cfg.data`; with
    `data.streaming` the training samples are None (a `TrainStream` reads them as training goes). Rows that fail
    go to `<out>/skipped.jsonl` (when `write`). Shared by both training methods (`texocr.grpo` too)."""
    from texocr.data.sources import write_skipped
    from texocr.errors import TexocrError

    skipped: list[Skipped] = []
    stream = cfg.data.streaming and train_samples is None
    if train_samples is None and not stream:
        if not cfg.data.train:
            raise TexocrError("no training data: set data.train (a folder, hf:<id>, a preset or 'synthetic')")
        train_samples = read_samples(cfg.data.train, cfg.data, split=cfg.data.split, limit=cfg.data.limit,
                                     skipped=skipped)
    if val_samples is None:
        val_samples = read_samples(cfg.data.val, cfg.data, split=cfg.data.val_split, limit=cfg.data.val_limit,
                                   skipped=skipped) if cfg.data.val else []
    if skipped and write:
        write_skipped(skipped, out / "skipped.jsonl")
    if not stream and not train_samples:
        raise TexocrError(f"no usable training samples in {cfg.data.train} "
                          f"({len(skipped)} rows skipped; see {out / 'skipped.jsonl'})")
    log.info("data: %s training, %d validation samples, %d rows skipped",
             "a stream of" if stream else len(train_samples or []), len(val_samples), len(skipped))
    return stream, train_samples, val_samples


class SampleDataset:
    """A map-style dataset over Samples (what the Trainer's samplers, DDP sharding and resume expect)."""

    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]


def training_glyph_height(cfg: Config, start: dict[str, Any] | None = None) -> float:
    """The glyph height training images are enlarged to (0: off): `data.glyph_height`, else `eval.glyph_height`,
    else the setting the starting model reads with (`start`, else read: `starting_options`)."""
    for given in (cfg.data.glyph_height, cfg.eval.glyph_height):
        if given is not None:
            return float(given)
    return float((starting_options(cfg) if start is None else start).get("glyph_height") or 0.0)


def starting_options(cfg: Config) -> dict[str, Any]:
    """The Recognizer settings the starting model reads with (a run's config, a model folder's
    `texocr_options.json`); {} for a model that is not local (a hub id, or missing: loading says so later)."""
    from texocr.errors import TexocrError
    from texocr.models.loading import resolve_model
    from texocr.models.saved import read_saved

    try:
        return read_saved(resolve_model(cfg.model.name_or_path)).options
    except TexocrError:
        return {}


# ---------------------------------------------------------------- trainer


def resolve_precision(precision: str) -> str:
    """`auto` -> `bf16` on a GPU that supports it, `fp16` on an older GPU, `no` on a CPU."""
    import torch

    if precision != "auto":
        if precision != "no" and not torch.cuda.is_available():
            from texocr.errors import TexocrError

            raise TexocrError(f"train.precision={precision} needs a CUDA GPU; use 'auto' or 'no' on a CPU")
        return precision
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


UNBOUNDED_STEPS = 10**12
"""`max_steps` of a stream bounded by time only (`train.max_minutes`): the Trainer needs a number."""


def max_steps(cfg: Config) -> int:
    """Optimizer steps of the run: `train.max_steps`, or, for a stream bounded by minutes, unbounded."""
    from texocr.errors import TexocrError

    t = cfg.train
    if t.max_steps > 0 or not cfg.data.streaming:
        return t.max_steps
    if t.max_minutes > 0 and t.scheduler in ("cosine_time", "constant", "constant_with_warmup"):
        return UNBOUNDED_STEPS
    raise TexocrError("a stream has no length: set train.max_steps, or train.max_minutes with train.scheduler "
                      "cosine_time (or constant)")


def training_arguments(cfg: Config, out: Path, *, has_val: bool) -> Any:
    """The `TrainingArguments` that express `cfg.train` (also what `accelerate launch` / DeepSpeed configure)."""
    from transformers import TrainingArguments

    from texocr.errors import TexocrError

    t: TrainConfig = cfg.train
    if t.scheduler == "cosine_time" and t.budget_minutes <= 0:
        raise TexocrError("train.scheduler cosine_time needs train.budget_minutes > 0 (all commands together)")
    precision = resolve_precision(t.precision)
    evaluate = has_val and t.eval_steps > 0
    stream = cfg.data.streaming
    workers = t.dataloader_workers
    return TrainingArguments(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        max_steps=max_steps(cfg),
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        adam_beta2=t.adam_beta2,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type="constant" if t.scheduler == "cosine_time" else t.scheduler,  # cosine_time: our own
        max_grad_norm=t.max_grad_norm,
        optim=t.optim,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        seed=t.seed,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluate else "no",
        eval_steps=t.eval_steps if evaluate else None,
        metric_for_best_model="exact_match" if evaluate else None,
        greater_is_better=True,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=t.save_total_limit,
        dataloader_num_workers=workers,
        dataloader_pin_memory=precision != "no",
        dataloader_prefetch_factor=8 if workers and stream else None,  # a fast model drains 2 batches at once
        # a stream shards itself over processes (texocr.data.stream.shard): no batches dispatched from rank 0,
        # and on resume nothing to skip over (the stream moves on by the resumed step instead)
        accelerator_config={"dispatch_batches": False} if stream else None,
        ignore_data_skip=stream,
        logging_nan_inf_filter=False,  # it reads the loss back every step: a GPU sync that stalls a small model
        remove_unused_columns=False,  # the collator reads Samples, not named columns
        report_to="none",  # TensorBoard is added explicitly so that it writes to logs/
        disable_tqdm=max_steps(cfg) == UNBOUNDED_STEPS,  # a bar over 10**12 steps says nothing; logs still print
        ddp_find_unused_parameters=False,
        use_cpu=_cpu_launch(),
    )


def _cpu_launch() -> bool:
    """True for a multi-process launch (torchrun / accelerate launch) on a machine without an accelerator.

    Without `use_cpu`, accelerate finds no GPU backend and sets up no process group: every process would then
    train alone on all the data, each believing it is rank 0. With it, the processes form a gloo group (DDP on
    the CPU).
    """
    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    accelerator = getattr(torch, "accelerator", None)
    return not (accelerator.is_available() if accelerator is not None else torch.cuda.is_available())


def _make_trainer_class() -> type:
    from transformers import Trainer

    class TexocrTrainer(Trainer):
        """A Trainer whose evaluation generates on the validation subset and reports exact match, whose
        training step finishes what worker-side collation left (`texocr.models.qwen_speed`), and which can
        schedule the learning rate by training time (`cosine_time`)."""

        texocr_loaded: LoadedModel
        texocr_val: list[Sample]
        texocr_eval_cfg: Any
        texocr_normalizer: Any = None  # PixelNormalizer when batches carry uint8 patches
        texocr_time_schedule: Any = None  # a factor(step) function for cosine_time
        texocr_answer_loss: Any = None  # AnswerLoss (train.answer_loss), also this Trainer's compute_loss_func
        texocr_offload: bool = False  # train.offload_checkpoints with gradient checkpointing

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            from texocr.fast_train import offloaded_checkpoints
            from texocr.models.qwen_speed import VISION_WIDTH

            width = inputs.pop("vision_width", None)  # an int from the worker: no GPU read per vision layer
            if self.texocr_normalizer is not None and inputs["pixel_values"].dtype.is_floating_point is False:
                inputs["pixel_values"] = self.texocr_normalizer(inputs["pixel_values"])  # uint8 -> floats, on device
            VISION_WIDTH["patches"] = width
            answer = self.texocr_answer_loss
            if answer is not None:
                inputs["logits_to_keep"] = 1  # the loss reads the decoder's output; the model's logits are unused
            try:
                with (answer.capture() if answer is not None else contextlib.nullcontext(),
                      offloaded_checkpoints(self.texocr_offload)):
                    return super().training_step(model, inputs, num_items_in_batch)
            finally:
                VISION_WIDTH["patches"] = None  # valid for this batch only

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.texocr_time_schedule is None:
                return super().create_scheduler(num_training_steps, optimizer)
            import torch

            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                                      self.texocr_time_schedule)
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None,
                     metric_key_prefix: str = "eval", *, render: bool = False) -> dict[str, float]:
            from texocr.train_callbacks import score_samples

            model = self.accelerator.unwrap_model(self.model)
            was_training = model.training
            model.eval()
            try:
                loaded = replace(self.texocr_loaded, model=model)
                # periodic evaluations skip rendering (image_match): exact match is what they steer by
                eval_cfg = replace(self.texocr_eval_cfg, render=render and self.texocr_eval_cfg.render)
                raw = score_samples(loaded, self.texocr_val, eval_cfg)
            finally:
                model.train(was_training)
            metrics = {f"{metric_key_prefix}_{k}": v for k, v in raw.items()}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

        def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
            # Checkpoints of a full model keep transformers' in-memory key layout: the Trainer resumes
            # with a plain load_state_dict, which does not undo the conversion to the original layout
            # that save_pretrained applies by default (huggingface/transformers#43701).
            from transformers import PreTrainedModel

            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            in_checkpoints = output_dir is not None and Path(output_dir).parent == Path(self.args.output_dir)
            if not (in_checkpoints and isinstance(model, PreTrainedModel)):
                return super()._save(output_dir, state_dict)
            original = model.save_pretrained
            model.save_pretrained = functools.partial(original, save_original_format=False)
            try:
                super()._save(output_dir, state_dict)
            finally:
                del model.save_pretrained  # back to the class's method

    return TexocrTrainer


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    metrics: dict[str, float]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None
    """The trained model (a PeftModel for LoRA/QLoRA), still in memory."""


def _rank() -> int:
    """This process's global rank under torchrun / accelerate launch (0 when launched alone)."""
    return int(os.environ.get("RANK", "0"))


def _device() -> str | None:
    """Each process of a multi-GPU launch loads its model on its own GPU."""
    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return None


def train(cfg: Config, *, train_samples: list[Sample] | None = None,
          val_samples: list[Sample] | None = None) -> TrainResult:
    """Run one training job; `train_samples`/`val_samples` replace `cfg.data` sources when given (tests, API)."""
    start = starting_options(cfg)
    cfg.data.glyph_height = training_glyph_height(cfg, start)
    if cfg.data.glyph_height and cfg.eval.glyph_height is None:  # the run then reads as it trained
        cfg.eval.glyph_height = cfg.data.glyph_height
    if cfg.eval.reread is None:  # and reads unsure inputs twice as the model it started from does
        cfg.eval.reread, cfg.eval.reread_below = start.get("reread"), start.get("reread_below")
    if cfg.train.method == "grpo":  # reinforcement fine-tuning from a reward: its own loop (texocr.grpo says why)
        from texocr.grpo import train_grpo

        # this module's data reading and model start are passed in: texocr.grpo importing them would be a circle
        run = train_grpo(cfg, train_samples=train_samples, val_samples=val_samples, read_data=read_data,
                         initial_model=initial_model)
        return TrainResult(**vars(run))
    from transformers import EarlyStoppingCallback, set_seed

    from texocr.config import save_config
    from texocr.data.collate import Collator, sized_as_read, training_target
    from texocr.data.stream import TrainStream
    from texocr.errors import TexocrError
    from texocr.models.lengths import fit_to_length
    from texocr.models.loading import load_model, trainable_parameters
    from texocr.train_callbacks import (
        CheckpointMarker,
        CsvLogger,
        MemoryTrim,
        TimeLimit,
        TrainClock,
        plot_loss,
        resolve_resume,
        time_cosine,
    )

    out = Path(cfg.train.output_dir)
    resume = resolve_resume(cfg.train.resume, out / "checkpoints")
    if resume:
        log.info("train.resume=%s: resuming from %s", cfg.train.resume, resume)
    out.mkdir(parents=True, exist_ok=True)
    main_process = _rank() == 0  # under torchrun / accelerate launch only rank 0 writes the run's files
    if main_process:
        save_config(cfg, out / "config.yaml")
    set_seed(cfg.train.seed)

    stream, train_samples, val_samples = read_data(cfg, out, train_samples, val_samples, write=main_process)

    model_cfg = initial_model(cfg, out)
    loaded = load_model(model_cfg, training=True, device=_device())
    log.info("%s (%s, %s)", trainable_parameters(loaded.model)["summary"], loaded.family.name, cfg.model.method)
    length_fit = None
    if stream:
        dataset: Any = TrainStream(cfg.data, offset=_checkpoint_step(resume))
    else:
        # over-long samples are left out here, once, with one line of account (not batch by batch)
        # counted at the size the collator shows them (the largest the glyph jitter can make them)
        shown = functools.partial(sized_as_read, glyph_height=cfg.data.glyph_height * (1 + cfg.data.glyph_jitter))
        train_samples, length_fit = fit_to_length(train_samples, loaded.family, loaded.processor,
                                                  cfg.model.max_length, target=training_target, image=shown)
        (log.warning if length_fit.dropped else log.info)(length_fit.summary())
        if not train_samples:
            raise TexocrError(f"every training sample is longer than model.max_length={cfg.model.max_length} "
                              f"(longest {length_fit.longest}): raise model.max_length or lower model.max_pixels")
        dataset = SampleDataset(train_samples)
    args = training_arguments(cfg, out, has_val=bool(val_samples))
    fast = speedups(cfg, loaded)
    levers = fast_levers(cfg, loaded, autocast=args.bf16 or args.fp16)
    if args.world_size > 1:
        log.info("process %d of %d (%s, %s): effective batch %d", args.process_index, args.world_size,
                 args.parallel_mode.value, args.device,
                 args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size)
    clock = TrainClock.resumed(resume)
    callbacks: list[Any] = [
        clock,  # before CheckpointMarker: a checkpoint is complete only with its clock
        CheckpointMarker(),
        CsvLogger(out / "logs" / "metrics.csv"),
        _tensorboard(out / "logs"),
    ]
    if stream:
        callbacks.append(MemoryTrim())
    if cfg.train.max_minutes > 0:
        callbacks.append(TimeLimit(cfg.train.max_minutes))
    if cfg.train.early_stopping_patience > 0 and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(cfg.train.early_stopping_patience))
    trainer = _make_trainer_class()(
        model=loaded.model,
        args=args,
        train_dataset=dataset,
        eval_dataset=SampleDataset(val_samples) if val_samples else None,
        data_collator=Collator(loaded, cfg.model.max_length, normalize=True, worker_side=fast,
                               glyph_height=cfg.data.glyph_height, glyph_jitter=cfg.data.glyph_jitter,
                               pack=levers.packed),
        processing_class=loaded.processor,
        callbacks=callbacks,
    )
    trainer.texocr_loaded, trainer.texocr_val, trainer.texocr_eval_cfg = loaded, val_samples, cfg.eval
    if fast:
        from texocr.models.qwen_speed import PixelNormalizer

        trainer.texocr_normalizer = PixelNormalizer(loaded.processor.image_processor)
    trainer.texocr_offload = levers.offload
    if cfg.train.answer_loss:
        trainer.texocr_answer_loss = answer_loss(trainer, loaded)
        trainer.compute_loss_func = trainer.texocr_answer_loss
    if cfg.train.scheduler == "cosine_time":
        warmup = int(cfg.train.warmup_ratio) if cfg.train.warmup_ratio >= 1 else 0
        trainer.texocr_time_schedule = time_cosine(clock, budget_seconds=cfg.train.budget_minutes * 60,
                                                   warmup_steps=warmup, min_ratio=cfg.train.min_lr_ratio)
    trainer.train(resume_from_checkpoint=resume)

    metrics: dict[str, Any] = {"n": 0.0}
    if val_samples:
        final_eval = trainer.evaluate(render=True)
        metrics = {k.removeprefix("eval_"): v for k, v in final_eval.items() if k != "epoch"}
    if length_fit is not None:
        metrics.update(length_fit.as_metrics())
    metrics["train_seconds"] = round(clock.seconds(), 1)
    # transformers' own train_samples_per_second divides max_steps (10**12 for a stream bounded by minutes) by the
    # runtime: the rate of the steps actually made, over the training time of the whole run (resumes included)
    effective = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    metrics["train_samples_per_s"] = round(trainer.state.global_step * effective / max(clock.seconds(), 1e-9), 1)
    peaks = gpu_peaks(trainer)
    if peaks:
        metrics["peak_gpu_gib"] = max(peaks)
        metrics["peak_gpu_gib_per_process"] = peaks
    log.info("%d optimizer steps of %d samples in %.0f s of training: %.1f samples/s%s", trainer.state.global_step,
             effective, clock.seconds(), metrics["train_samples_per_s"],
             " (transformers' train_samples_per_second above assumes the stream's unbounded max_steps)"
             if max_steps(cfg) == UNBOUNDED_STEPS else "")
    final = out / ("model" if cfg.model.method == "full" else "adapter")
    if trainer.is_fsdp_enabled:
        # checkpoints stay sharded (fast, resumable); the final weights are gathered whole, or save_model
        # would write none (untested here: accelerate has no FSDP on a CPU)
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    # every process calls save_model: FSDP and DeepSpeed gather the weights collectively; only rank 0 writes
    trainer.save_model(str(final))  # a PeftModel saves only its adapter
    if trainer.is_world_process_zero():
        loaded.processor.save_pretrained(str(final))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_loss(trainer.state.log_history, out / "loss_curve.png")
    return TrainResult(out, trainer.state.global_step, metrics, list(trainer.state.log_history),
                       trainer.accelerator.unwrap_model(trainer.model))


def gpu_peaks(trainer: Any) -> list[float]:
    """Each process's peak allocated GPU memory in GiB (all ranks gathered, in rank order); [] without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30], device=trainer.args.device)
    return [round(float(x), 2) for x in trainer.accelerator.gather(peak).cpu()]


def initial_model(cfg: Config, out: Path) -> ModelConfig:
    """The model config to load: `cfg.model`, or a fresh compact model of `model.init_size` built in
    `<out>/init`, deepened to `model.grow` (in `<out>/grown-<size>`) when asked. Both are deterministic, so a
    resumed command rebuilds the same architecture before loading its checkpoint."""
    from texocr.models.compact import build_compact, grow_compact

    m = cfg.model
    path = m.name_or_path
    if m.init_size:
        init = out / "init"
        if not (init / "config.json").is_file():
            log.info("building a random %s compact model in %s", m.init_size, init)
            build_compact(init, size=m.init_size, seed=cfg.train.seed)
        path = str(init)
    if m.grow:
        from texocr.models.loading import resolve_model

        path = str(grow_compact(resolve_model(path), m.grow, out / f"grown-{m.grow}"))
        log.info("grew %s into a %s compact model: %s", m.name_or_path, m.grow, path)
    if path == m.name_or_path:
        return m
    return replace(m, name_or_path=path, family=m.family or "compact")


@dataclass(frozen=True)
class Levers:
    """What `fast_levers` leaves to the collator and the training step."""

    offload: bool  # offload checkpointed layer inputs (`fast_train.offloaded_checkpoints`)
    packed: bool  # padding-free batches (`Collator(pack=True)`, `texocr.models.packing`)


def fast_levers(cfg: Config, loaded: LoadedModel, *, autocast: bool) -> Levers:
    """Apply the `train.*` step levers of `texocr.fast_train` and `train.padding_free` this run allows, log which
    applied, and say what the collator and the training step must do for the rest."""
    import torch

    from texocr import fast_train
    from texocr.models import packing

    t, model, done = cfg.train, loaded.model, []
    packed = t.padding_free and packing.supports(loaded.family.name) and packing.use_packed_attention(model)
    if t.fused_lora and (n := fast_train.fuse_lora(model)):
        done.append(f"fused LoRA ({n} layers)")
    if t.lora_autocast_inputs and autocast and (n := fast_train.lora_autocast_inputs(model)):
        done.append("LoRA inputs left to autocast")
    if t.liger_kernels and (n := fast_train.liger_kernels(model)):
        done.append(f"Liger RMSNorm/SwiGLU ({n} modules)")
    if packed:
        done.append("padding-free rows")
    offload = t.offload_checkpoints and cfg.model.gradient_checkpointing and torch.cuda.is_available()
    if offload:
        done.append("checkpointed layer inputs offloaded to host memory")
    log.info("step levers: %s", ", ".join(done) or "none")
    return Levers(offload=offload, packed=packed)


def answer_loss(trainer: Any, loaded: LoadedModel) -> Any:
    """`train.answer_loss`: the chunked answer-position loss for this model (`texocr.answer_loss`), or None (the
    model's own loss) where it does not apply: a head that is not a plain linear layer, or sharded weights, whose
    head the loss could not read whole outside the model's forward."""
    from texocr.answer_loss import AnswerLoss

    zero3 = getattr(trainer, "is_deepspeed_enabled", False) and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3
    loss = None if trainer.is_fsdp_enabled or zero3 else AnswerLoss.attach(loaded.model)
    log.info("loss: %s", "answer positions only, chunked linear cross-entropy (train.answer_loss)" if loss else
             "the model's own (logits at every position)")
    return loss


def speedups(cfg: Config, loaded: LoadedModel) -> bool:
    """Turn on the Qwen2-VL speed-ups the config allows for this model; True when batches are collated
    worker-side (uint8 patches, positions), which needs DataLoader workers to pay off."""
    from texocr.models import qwen_speed

    if not qwen_speed.supports(loaded.family.name):
        return False
    if cfg.model.batch_vision_attention:
        qwen_speed.batch_vision_attention()
    return cfg.data.collate_in_workers and cfg.train.dataloader_workers > 0


def _checkpoint_step(checkpoint: str | None) -> int:
    """The optimizer step a checkpoint was saved at (0 for none)."""
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else 0


def _tensorboard(folder: Path) -> Any:
    """TensorBoard events in `logs/` (the stock callback would write under checkpoints/runs/)."""
    from transformers.integrations import TensorBoardCallback

    callback = TensorBoardCallback()
    callback.logging_dir = str(folder)
    return callback
