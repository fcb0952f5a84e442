"""What a first `texocr predict` pays for (bench/load_time.md): no training or plotting library is imported on
its path, and on a busy CPU it runs on the idle cores instead of letting OpenMP threads spin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from texocr.cli import main

NOT_ON_THE_PREDICT_PATH = ("datasets", "matplotlib", "tensorboard", "peft", "sacrebleu", "pandas", "ziamath")


def _formula(path: Path) -> Path:
    im = Image.new("RGB", (120, 36), "white")
    ImageDraw.Draw(im).text((6, 10), "x^2+1", fill="black")
    im.save(path)
    return path


def test_predict_imports_no_training_or_plotting_library(tiny_model_dir, tmp_path):
    img = _formula(tmp_path / "eq.png")
    code = ("import json, sys; from texocr.cli import main; "
            f"rc = main(['predict', '--model', {str(tiny_model_dir('qwen2_vl'))!r}, {str(img)!r}, "
            "'--max-new-tokens', '4']); "
            f"print(json.dumps([rc, sorted(m for m in sys.modules if m.split('.')[0] in {NOT_ON_THE_PREDICT_PATH!r})]))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                         check=False)  # the assertion below shows stderr
    assert out.returncode == 0, out.stderr[-2000:]
    rc, imported = json.loads(out.stdout.strip().splitlines()[-1])
    assert rc == 0 and imported == [], f"imported on the predict path: {imported}"


def test_predict_on_a_busy_cpu_uses_the_idle_cores(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import torch

    img = _formula(tmp_path / "eq.png")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 3.0, 3.0))  # 3 of 4 cores busy
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        assert main(["predict", "--model", str(tiny_model_dir("qwen2_vl")), str(img), "--max-new-tokens", "4",
                     "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # an explicit choice wins
        assert main(["predict", "--model", str(tiny_model_dir("qwen2_vl")), str(img), "--max-new-tokens", "4",
                     "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()


@pytest.mark.parametrize("load, threads", [(0.0, 4), (1.4, 3), (3.9, 1), (7.0, 1)])
def test_cpu_threads(monkeypatch, load, threads):
    from texocr.cpu import cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert cpu_threads() == threads
