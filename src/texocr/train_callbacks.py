"""Pieces of a training run around the Hugging Face `Trainer`: CSV logs, checkpoint completion markers,
resume resolution, the loss curve, and the generation-based evaluation used during and after training.

A checkpoint counts as complete only once `COMPLETE_MARKER` exists in it. The Trainer writes a checkpoint
file by file (weights, optimizer, scheduler, RNG, trainer_state.json); the marker is written atomically
afterwards (in `on_save`), so a run killed half-way through a save leaves a folder that `--train.resume
latest` passes over.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from texocr.errors import TexocrError

if TYPE_CHECKING:
    from texocr.config import EvalConfig
    from texocr.sample import Sample

log = logging.getLogger("texocr.train")

COMPLETE_MARKER = "texocr_complete"
CLOCK_FILE = "texocr_clock.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------- checkpoints


def complete_checkpoints(folder: str | Path) -> list[Path]:
    """Complete `checkpoint-N` folders under `folder`, oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARKER).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str | None, checkpoints_dir: str | Path) -> str | None:
    """`None` -> None; `latest` -> the newest complete checkpoint (None when there is none yet);
    a directory -> itself, if it is a complete checkpoint."""
    if not spec:
        return None
    if spec == "latest":
        done = complete_checkpoints(checkpoints_dir)
        skipped = [p for p in Path(checkpoints_dir).glob("checkpoint-*")
                   if p.is_dir() and not (p / COMPLETE_MARKER).is_file()] if Path(checkpoints_dir).is_dir() else []
        for p in skipped:
            log.warning("ignoring incomplete checkpoint %s (no %s marker)", p, COMPLETE_MARKER)
        if not done:
            log.warning("train.resume=latest: no complete checkpoint in %s; starting from scratch", checkpoints_dir)
            return None
        return str(done[-1])
    path = Path(spec)
    if not path.is_dir():
        raise TexocrError(f"train.resume: {spec} is not a directory (use 'latest' or a checkpoint-N folder)")
    if not (path / COMPLETE_MARKER).is_file():
        raise TexocrError(f"train.resume: {spec} is not a complete texocr checkpoint (no {COMPLETE_MARKER} file; "
                          "it was probably interrupted while being written)")
    return str(path)


class CheckpointMarker(TrainerCallback):
    """Marks a checkpoint complete after the Trainer has written all of it."""

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # other ranks may still be writing their RNG state / shards
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            _atomic_write(folder / COMPLETE_MARKER, json.dumps({"step": state.global_step}) + "\n")


class TimeLimit(TrainerCallback):
    """Stops training once `minutes` of wall time have passed since training began (checked after each step).

    Every process of a multi-process launch takes the same decision (the max over ranks), so none is left
    waiting in a collective for a rank that stopped.
    """

    def __init__(self, minutes: float) -> None:
        self.seconds = minutes * 60
        self.start: float | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.start is None:  # the clock starts when data flows (a stream's workers may take a while)
            self.start = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.start is None:
            self.start = time.monotonic()
        over = time.monotonic() - self.start >= self.seconds
        if args.world_size > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([float(over)], device=args.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over = bool(flag.item())
        if over and not control.should_training_stop:
            log.info("train.max_minutes=%g reached at step %d: stopping", self.seconds / 60, state.global_step)
            control.should_training_stop = True
            if getattr(args, "save_strategy", "no") not in ("no", None):  # `--train.resume latest` goes on from here
                control.should_save = True


class MemoryTrim(TrainerCallback):
    """Gives freed heap memory back to the system every `every` steps (glibc's `malloc_trim`; elsewhere nothing).

    A stream decodes images of every size and collates batches of every shape: glibc keeps the freed blocks in
    fragmented arenas, and without a trim the process grew by ~17 % between steps 31 and 300 of the same 2,000-row
    folder (bench/stream_rss.md), so a long run's memory rose with its length instead of staying flat.
    """

    def __init__(self, every: int = 50) -> None:
        import ctypes
        import ctypes.util

        self.every = every
        try:
            self.trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
            self.trim = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trim is not None and state.global_step % self.every == 0:
            self.trim(0)


class TrainClock(TrainerCallback):
    """Seconds of training of the whole run across resumed commands (what `cosine_time` schedules by).

    Each command counts from its first step (when data flows); the total is saved into every checkpoint
    (`CLOCK_FILE`, before `CheckpointMarker` marks it complete) and read back by `resumed`.
    """

    def __init__(self, done: float = 0.0) -> None:
        self.done = done
        self.start: float | None = None

    @classmethod
    def resumed(cls, checkpoint: str | None) -> TrainClock:
        path = Path(checkpoint) / CLOCK_FILE if checkpoint else None
        if path is None or not path.is_file():
            return cls()
        return cls(float(json.loads(path.read_text())["train_seconds"]))

    def seconds(self) -> float:
        return self.done + (time.monotonic() - self.start if self.start is not None else 0.0)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.start is None:
            self.start = time.monotonic()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            _atomic_write(folder / CLOCK_FILE, json.dumps({"train_seconds": round(self.seconds(), 3)}) + "\n")


def time_cosine(clock: TrainClock, *, budget_seconds: float, warmup_steps: int, min_ratio: float) -> Any:
    """The LR factor of `cosine_time`: a cosine from 1 to `min_ratio` over `budget_seconds` of training time,
    times a linear warm-up over the first `warmup_steps` optimizer steps."""

    def factor(step: int) -> float:
        progress = min(max(clock.seconds() / budget_seconds, 0.0), 1.0)
        cosine = min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return cosine * min(1.0, (step + 1) / max(1, warmup_steps))

    return factor


# ---------------------------------------------------------------- logs


class CsvLogger(TrainerCallback):
    """Appends every logged number to `path` as `step,epoch,time,name,value` rows (survives resumes).

    `time` is the wall clock (Unix seconds) when the Trainer logged the row: throughput between two
    logged steps is `(step2 - step1) * batch / (time2 - time1)`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "epoch", "time", "name", "value"])
            now = f"{time.time():.3f}"
            for name, value in logs.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    w.writerow([state.global_step, f"{state.epoch or 0:.4f}", now, name, value])


def read_csv_log(path: str | Path, name: str, *, with_time: bool = False) -> dict[int, Any]:
    """`{step: value}` (or `{step: (time, value)}`) of one logged quantity; the last row wins when a
    resumed run logs a step again."""
    out: dict[int, Any] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            if row["name"] == name:
                value = float(row["value"])
                out[int(row["step"])] = (float(row["time"]), value) if with_time else value
    return out


def plot_loss(log_history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Training loss (and exact match, when evaluated) against step, saved as a PNG; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = [(h["step"], h["loss"]) for h in log_history if "loss" in h and math.isfinite(h["loss"])]
    em = [(h["step"], h["eval_exact_match"]) for h in log_history if "eval_exact_match" in h]
    if not loss and not em:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    if loss:
        ax.plot(*zip(*loss), label="train loss", color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if em:
        ax2 = ax.twinx()
        ax2.plot(*zip(*em), "o-", label="val exact match", color="tab:orange")
        ax2.set_ylabel("exact match")
        ax2.set_ylim(0, 1)
    ax.set_title("texocr training")
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------- evaluation


def score_samples(loaded: Any, samples: list[Sample], eval_cfg: EvalConfig) -> dict[str, float]:
    """Generate on `samples` through the Recognizer and compute the metrics (`texocr.evaluate.score`)."""
    from texocr.evaluate import score
    from texocr.infer import Recognizer

    metrics = score(Recognizer.from_loaded(loaded, eval_cfg), samples, eval_cfg).metrics
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
