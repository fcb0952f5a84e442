"""Training streams (`texocr.data.stream`) and `texocr train` on them: sharding without duplicates, bad rows
skipped, real parts mixed in, the compact model pretrained from a config, resumed where it stopped."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from texocr.config import DataConfig, load_config
from texocr.data.stream import TrainStream
from texocr.errors import TexocrError

ROOT = Path(__file__).resolve().parents[1]


def _folder(root: Path, n: int, bad: int = 0) -> Path:
    """A labels.jsonl folder of `n` drawn formulas, plus `bad` rows with a corrupt image."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        img = Image.new("RGB", (80 + 4 * (i % 7), 28), "white")
        ImageDraw.Draw(img).text((4, 8), f"x+{i}", fill="black")
        img.save(root / "images" / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "latex": f"x + {i}", "id": f"r{i}"})
    for j in range(bad):
        (root / "images" / f"bad{j}.png").write_bytes(b"\x89PNG not an image")
        rows.append({"image": f"images/bad{j}.png", "latex": "y", "id": f"bad{j}"})
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _read(stream: TrainStream, n: int, monkeypatch: pytest.MonkeyPatch, rank: int = 0, world: int = 1) -> list:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    return list(itertools.islice(iter(stream), n))


def test_folder_stream_shards_between_ranks_without_duplicates(tmp_path: Path, monkeypatch) -> None:
    data = _folder(tmp_path / "d", 30, bad=3)
    cfg = DataConfig(train=[str(data)], streaming=True, shuffle_buffer=8)
    epoch = [s.id for s in _read(TrainStream(cfg), 30, monkeypatch)]  # one process: one epoch, bad rows skipped
    assert sorted(epoch) == sorted(f"r{i}" for i in range(30))
    assert epoch != [f"r{i}" for i in range(30)]  # shuffled
    halves = [[s.id for s in _read(TrainStream(cfg), 15, monkeypatch, rank=r, world=2)] for r in (0, 1)]
    assert not set(halves[0]) & set(halves[1])  # each rank reads its own rows
    assert sorted(halves[0] + halves[1]) == sorted(epoch)
    again = [s.id for s in _read(TrainStream(cfg), 60, monkeypatch)]  # epochs go on
    assert sorted(again) == sorted(epoch * 2)


def test_stream_of_only_bad_rows_stops_with_an_error(tmp_path: Path, monkeypatch) -> None:
    data = _folder(tmp_path / "d", 0, bad=4)
    with pytest.raises(TexocrError, match="no usable sample"):
        _read(TrainStream(DataConfig(train=[str(data)], streaming=True)), 1, monkeypatch)


def test_a_reader_without_rows_of_its_own_reads_every_row(tmp_path: Path, monkeypatch) -> None:
    """More readers than rows, or a reader whose rows are all bad: it reads the whole folder instead of stopping
    the run (duplicates between readers beat a failed training)."""
    few = _folder(tmp_path / "few", 3)
    got = _read(TrainStream(DataConfig(train=[str(few)], streaming=True)), 6, monkeypatch, rank=3, world=4)
    assert {s.id for s in got} == {"r0", "r1", "r2"}
    bad_half = _folder(tmp_path / "bad", 2, bad=2)  # rows r0 r1 bad0 bad1: reader 1 of 2 holds r1 and bad1
    got = _read(TrainStream(DataConfig(train=[str(bad_half)], streaming=True)), 4, monkeypatch, rank=0, world=2)
    assert {s.id for s in got} == {"r0"}
    only_bad = _folder(tmp_path / "only-bad", 1, bad=3)  # rows r0 bad0 bad1 bad2: reader 1 of 2 has bad0, bad2
    got = _read(TrainStream(DataConfig(train=[str(only_bad)], streaming=True)), 3, monkeypatch, rank=1, world=2)
    assert {s.id for s in got} == {"r0"}


def test_real_parts_take_their_share(tmp_path: Path, monkeypatch) -> None:
    main = _folder(tmp_path / "main", 20)
    real = _folder(tmp_path / "real", 5)
    cfg = DataConfig(train=[str(main)], streaming=True, real=[f"printed:{real}:1"], real_ratio=0.5)
    got = _read(TrainStream(cfg), 400, monkeypatch)
    share = sum(bool(s.meta.get("real")) for s in got) / len(got)
    assert 0.4 < share < 0.6
    with pytest.raises(TexocrError, match="real_ratio"):
        TrainStream(DataConfig(train=[str(main)], streaming=True, real_ratio=0.3))
    with pytest.raises(TexocrError, match="kind must be"):
        TrainStream(DataConfig(train=[str(main)], streaming=True, real=[f"scans:{real}"], real_ratio=0.3))


def test_resumed_stream_moves_on(tmp_path: Path, monkeypatch) -> None:
    data = _folder(tmp_path / "d", 40)
    cfg = DataConfig(train=[str(data)], streaming=True, shuffle_buffer=16)
    first = [s.id for s in _read(TrainStream(cfg, offset=0), 10, monkeypatch)]
    assert first == [s.id for s in _read(TrainStream(cfg, offset=0), 10, monkeypatch)]  # deterministic
    assert first != [s.id for s in _read(TrainStream(cfg, offset=5), 10, monkeypatch)]


def _pretrain_cfg(out: Path, data: Path, *extra: str):
    return load_config(ROOT / "configs" / "compact" / "pretrain.yaml", [
        "--model.init_size", "tiny", "--model.dtype", "float32", "--data.train", str(data), "--data.formulas", "null",
        "--data.real", "[]", "--data.real_ratio", "0", "--data.val", "[]", "--train.output_dir", str(out),
        "--train.batch_size", "4", "--train.dataloader_workers", "0", "--train.logging_steps", "1",
        "--train.save_steps", "2", "--train.budget_minutes", "5", "--train.warmup_ratio", "0", *extra])


def test_pretraining_config_streams_and_resumes(tmp_path: Path) -> None:
    """The compact model's recipe (configs/compact/pretrain.yaml) through `texocr train`: a fresh tiny model
    on a stream, stopped at step 4, resumed to step 6 from its checkpoint with its clock."""
    from texocr.train import train
    from texocr.train_callbacks import CLOCK_FILE, read_csv_log

    data = _folder(tmp_path / "d", 24)
    out = tmp_path / "run"
    first = train(_pretrain_cfg(out, data, "--train.max_steps", "4"))
    assert first.steps == 4
    assert (out / "init" / "config.json").is_file() and (out / "model" / "config.json").is_file()
    clock = json.loads((out / "checkpoints" / "checkpoint-4" / CLOCK_FILE).read_text())["train_seconds"]
    assert clock > 0
    lr4 = read_csv_log(out / "logs" / "metrics.csv", "learning_rate")[4]
    second = train(_pretrain_cfg(out, data, "--train.max_steps", "6", "--train.resume", "latest"))
    assert second.steps == 6
    loss = read_csv_log(out / "logs" / "metrics.csv", "loss")
    assert set(loss) >= {1, 2, 3, 4, 5, 6}
    lrs = read_csv_log(out / "logs" / "metrics.csv", "learning_rate")
    assert lrs[6] <= lr4  # the time cosine went on from the saved clock, not from the peak
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_seconds"] >= clock
    # the rate of the 6 steps of 4 made, not transformers' max_steps / runtime
    seconds = metrics["train_seconds"]  # rounded to 0.1 s in the file; the rate was computed before rounding
    assert 6 * 4 / (seconds + 0.05) <= metrics["train_samples_per_s"] <= 6 * 4 / max(seconds - 0.05, 1e-3)


def test_worker_side_speedups_train_the_same_as_the_plain_path(tmp_path: Path) -> None:
    """Two DataLoader workers collating uint8 patches + positions, the batched vision attention: the same
    losses as the plain path on the same stream (same seeds), step by step."""
    from texocr.train import train
    from texocr.train_callbacks import read_csv_log

    data = _folder(tmp_path / "d", 16)
    losses = []
    for name, extra in (("plain", ["--data.collate_in_workers", "false", "--model.batch_vision_attention", "false"]),
                        ("fast", ["--data.collate_in_workers", "true", "--model.batch_vision_attention", "true"])):
        out = tmp_path / name
        train(_pretrain_cfg(out, data, "--train.max_steps", "3", "--train.dataloader_workers", "2",
                            "--train.save_steps", "0", "--data.shuffle_buffer", "1", *extra))
        losses.append(read_csv_log(out / "logs" / "metrics.csv", "loss"))
    assert set(losses[0]) == set(losses[1]) == {1, 2, 3}
    for step in (1, 2, 3):
        assert losses[1][step] == pytest.approx(losses[0][step], rel=1e-4), step


def test_a_stream_needs_a_bound(tmp_path: Path) -> None:
    from texocr.train import max_steps

    cfg = _pretrain_cfg(tmp_path, tmp_path, "--train.max_steps", "-1", "--train.max_minutes", "0")
    with pytest.raises(TexocrError, match="no length"):
        max_steps(cfg)


def test_kill_9_mid_run_then_resume_latest(tmp_path: Path) -> None:
    """A training process killed with SIGKILL (at the moment a checkpoint is being written, when the test catches
    one) leaves no checkpoint that `--train.resume latest` would pick half-written, and the resumed run's loss
    curve goes on from the checkpoint's step."""
    import os
    import subprocess
    import sys
    import time

    from texocr.config import save_config
    from texocr.train import train
    from texocr.train_callbacks import (
        COMPLETE_MARKER,
        complete_checkpoints,
        read_csv_log,
        resolve_resume,
    )

    data = _folder(tmp_path / "d", 24)
    out = tmp_path / "run"
    cfg = _pretrain_cfg(out, data, "--train.max_steps", "100000", "--train.save_steps", "3",
                        "--train.save_total_limit", "3", "--train.max_minutes", "10")
    save_config(cfg, tmp_path / "c.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-m", "texocr", "train", "--config", str(tmp_path / "c.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 240
    caught = False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = complete_checkpoints(out / "checkpoints")
            writing = [p for p in (out / "checkpoints").glob("checkpoint-*") if not (p / COMPLETE_MARKER).exists()] \
                if (out / "checkpoints").is_dir() else []
            if len(done) >= 2 and (writing or len(done) >= 3):
                caught = bool(writing)
                break
            time.sleep(0.005)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.kill()  # SIGKILL: no handler, no cleanup
    finally:
        proc.kill()
        proc.wait()
    picked = resolve_resume("latest", out / "checkpoints")
    assert picked is not None and (Path(picked) / COMPLETE_MARKER).is_file()
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
        assert (Path(picked) / name).is_file(), name
    step = int(Path(picked).name.split("-")[1])
    logged = read_csv_log(out / "logs" / "metrics.csv", "loss")
    assert max(logged) >= step
    second = train(_pretrain_cfg(out, data, "--train.max_steps", str(step + 3), "--train.resume", "latest",
                                 "--train.save_steps", "3"))
    assert second.steps == step + 3
    after = read_csv_log(out / "logs" / "metrics.csv", "loss")
    assert {step + 1, step + 2, step + 3} <= set(after)
    print(f"killed {'while a checkpoint was being written' if caught else 'between checkpoints'}; resumed at {step}")
