"""`texocr train` as two processes on the CPU (gloo), so the multi-GPU path is tested without a GPU.

The real CLI (`python -m texocr train`) runs under `torchrun --nproc_per_node 2` on a tiny Qwen2-VL with LoRA.
Asserted: both ranks form one data-parallel group (each logs "process r of 2"; one step covers the whole
4-sample data set at 2 samples per rank); its losses, gradient norms and final adapter equal a one-process run
with the same global batch of 4 (so the data is sharded and the gradients are averaged, not trained twice);
only rank 0 writes the run's files (an audit hook records every file each rank opens for writing); the saved
adapter loads and gives finite logits; every LoRA parameter moved. The slow test resumes the two-process run
from its checkpoint under `accelerate launch` with configs/accelerate/ddp.yaml and gets the same losses.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_train import LATEX, _image
from test_train import data_dir as _train_data  # noqa: F401 - a fixture: 4 formulas + 1 corrupt image

from texocr.config import ModelConfig
from texocr.train_callbacks import COMPLETE_MARKER, read_csv_log

REPO = Path(__file__).resolve().parents[1]
STEPS = 4

# Loaded by every process of a launch (through PYTHONPATH): records the files this rank opens for writing
# under TEXOCR_AUDIT_ROOT, written to TEXOCR_AUDIT_DIR/rank-<RANK>.json when the process exits.
# It sees Python-level opens and renames (config, CSV, JSON, PNG, TensorBoard), not files written from native
# code (safetensors, torch.save).
SITECUSTOMIZE = textwrap.dedent('''
    import atexit, json, os, sys

    if "RANK" in os.environ and os.environ.get("TEXOCR_AUDIT_DIR"):
        _root = os.path.realpath(os.environ["TEXOCR_AUDIT_ROOT"]) + os.sep
        _writes = []

        def _hook(event, args):
            if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1], args[2] or 0
                writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                           else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
                paths = [args[0]] if writing else []
            elif event in ("os.rename", "os.remove"):
                paths = [args[-3] if event == "os.rename" else args[0]]  # rename: (src, dst, src_fd, dst_fd)
            else:
                return
            for p in paths:
                p = os.path.realpath(os.fsdecode(p))
                if p.startswith(_root):
                    _writes.append(p[len(_root):])

        def _dump():
            path = os.path.join(os.environ["TEXOCR_AUDIT_DIR"], "rank-%s.json" % os.environ["RANK"])
            with open(path, "w") as f:
                json.dump(sorted(set(_writes)), f)

        sys.addaudithook(_hook)
        atexit.register(_dump)
''')


@dataclass
class Launch:
    out: Path
    log: str
    data: Path
    writes: dict[int, list[str]]
    """Run-relative paths each rank opened for writing."""


def _overrides(model_dir: Path, data: Path, out: Path, batch_size: int, *extra: str) -> list[str]:
    return ["--model.name_or_path", str(model_dir), "--model.lora_r", "4", "--model.lora_alpha", "8",
            "--data.train", str(data), "--data.val", str(data), "--data.val_limit", "2",
            "--train.output_dir", str(out), "--train.batch_size", str(batch_size), "--train.lr", "0.01",
            "--train.logging_steps", "1", "--train.warmup_ratio", "0", "--train.max_steps", str(STEPS),
            "--train.save_steps", "2", "--train.eval_steps", "2", "--eval.max_new_tokens", "4",
            "--eval.batch_size", "2", "--eval.render", "false", *extra]


def _launch(launcher: list[str], train_args: list[str], out: Path, audit: Path, data: Path) -> Launch:
    """Run `<launcher> -m texocr train <train_args>` with the audit hook; fail with the log on error."""
    audit.mkdir(parents=True)
    (audit / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TEXOCR_AUDIT_DIR": str(audit), "TEXOCR_AUDIT_ROOT": str(out),
           "PYTHONPATH": os.pathsep.join([str(audit), os.environ.get("PYTHONPATH", "")])}
    cmd = [*launcher, "-m", "texocr", "train", "--config", os.devnull, *train_args]
    proc = subprocess.run(cmd, check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{log[-6000:]}"
    writes = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in audit.glob("rank-*.json")}
    return Launch(out, log, data, writes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun() -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tmp_path_factory, request) -> Launch:
    data = request.getfixturevalue("_train_data")
    root = tmp_path_factory.mktemp("dist-2proc")
    out = root / "run"
    return _launch(_torchrun(), _overrides(tiny_model_dir("qwen2_vl"), data, out, 2), out, root / "audit", data)


def _assert_ranks(run: Launch) -> None:
    """Both ranks joined one gloo group, and rank 1 wrote nothing of the run (its RNG state aside)."""
    for rank in (0, 1):
        assert f"process {rank} of 2 (distributed" in run.log, run.log[-4000:]
    assert sorted(run.writes) == [0, 1], "the audit hook did not report from both ranks"
    assert "config.yaml" in run.writes[0] and "logs/metrics.csv" in run.writes[0]  # the hook sees rank 0's writes
    stray = [p for p in run.writes[1] if not p.endswith("rng_state_1.pth")]
    assert not stray, f"rank 1 wrote {stray}"


def test_two_processes_train_like_one_with_the_same_global_batch(two_process_run, tiny_model_dir, tmp_path):
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import set_seed

    from texocr.config import load_config
    from texocr.data.collate import Collator
    from texocr.models.loading import load_model
    from texocr.sample import Sample
    from texocr.train import train

    run = two_process_run
    _assert_ranks(run)
    out = run.out
    for name in ("config.yaml", "metrics.json", "loss_curve.png", "skipped.jsonl", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors", "adapter/processor_config.json"):
        assert (out / name).is_file(), name
    events = {p.name.rsplit(".", 2)[1] for p in (out / "logs").glob("events.out.tfevents.*")}  # writer pids
    assert len(events) == 1, f"TensorBoard events from {len(events)} processes"
    for step in (2, 4):
        ckpt = out / "checkpoints" / f"checkpoint-{step}"
        assert (ckpt / COMPLETE_MARKER).is_file() and (ckpt / "rng_state_1.pth").is_file(), sorted(ckpt.iterdir())

    # one row per step (not one per rank); 2 samples x 2 ranks = the whole data set per step: epoch == step
    csv = out / "logs" / "metrics.csv"
    losses, epochs = read_csv_log(csv, "loss"), read_csv_log(csv, "epoch")
    rows = [line for line in csv.read_text().splitlines() if line.split(",")[3:4] == ["loss"]]
    assert sorted(losses) == list(range(1, STEPS + 1)) and len(rows) == STEPS
    assert all(math.isfinite(v) for v in losses.values())
    assert epochs[1] == pytest.approx(1.0)
    assert sorted(read_csv_log(csv, "eval_exact_match")) == [2, 4]  # periodic evaluation ran (on every rank)
    assert json.loads((out / "metrics.json").read_text())["n"] == 2

    # one process with the same global batch: same losses, gradient norms and final adapter
    ref_out = tmp_path / "one"
    cfg = load_config(None, _overrides(tiny_model_dir("qwen2_vl"), run.data, ref_out, 4))
    set_seed(cfg.train.seed)  # train() seeds the same way before building the model: same initial LoRA weights
    initial = {k: v.detach().clone() for k, v in get_peft_model_state_dict(load_model(cfg.model, training=True).model).items()}
    ref = train(cfg)
    ref_csv = ref_out / "logs" / "metrics.csv"
    for name in ("loss", "grad_norm"):
        ref_values, values = read_csv_log(ref_csv, name), read_csv_log(csv, name)
        for step in range(1, STEPS + 1):
            assert values[step] == pytest.approx(ref_values[step], rel=1e-4, abs=1e-6), (name, values, ref_values)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    ref_adapter = get_peft_model_state_dict(ref.model)
    assert adapter.keys() == ref_adapter.keys() == initial.keys() and initial
    for name, value in adapter.items():
        torch.testing.assert_close(value, ref_adapter[name].detach(), atol=1e-5, rtol=1e-4)
        assert not torch.equal(value, initial[name]), f"{name} did not change"

    # the saved adapter loads on its base and gives finite logits
    reloaded = load_model(ModelConfig(name_or_path=str(out / "adapter")))
    batch = Collator(reloaded, 1024, normalize=True)([Sample(_image(t), t, t) for t in LATEX[:2]])
    reloaded.model.eval()
    with torch.no_grad():
        logits = reloaded.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    assert torch.isfinite(logits).all()


@pytest.mark.slow
def test_two_process_resume_under_accelerate_launch(two_process_run, tiny_model_dir, tmp_path):
    """Resume checkpoint-2 of the torchrun run with `accelerate launch` (ddp.yaml): steps 3-4 log the same losses."""
    ckpt = two_process_run.out / "checkpoints" / "checkpoint-2"
    out = tmp_path / "resumed"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(REPO / "configs" / "accelerate" / "ddp.yaml"), "--num_processes", "2",
                "--mixed_precision", "no", "--main_process_port", str(_free_port())]
    data = two_process_run.data
    run = _launch(launcher, _overrides(tiny_model_dir("qwen2_vl"), data, out, 2, "--train.resume", str(ckpt)),
                  out, tmp_path / "audit", data)
    _assert_ranks(run)
    resumed = read_csv_log(out / "logs" / "metrics.csv", "loss")
    uninterrupted = read_csv_log(two_process_run.out / "logs" / "metrics.csv", "loss")
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(uninterrupted[step], rel=1e-4, abs=1e-6), (resumed, uninterrupted)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
