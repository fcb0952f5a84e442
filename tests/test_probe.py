"""Renderers are probed before use; a renderer that cannot work, or a stream whose samples all fail, stops early.

A fake TeX (`latex` on PATH that fails every document the way a TeX without preview-latex-style does) makes
`texocr data render`, `texocr train` on the synthetic stream and `texocr demo` each end within a minute with a
message naming the missing package, or fall back to the pip renderer with one warning when that one is installed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from texocr.data import probe
from texocr.data.render import get_renderer
from texocr.data.synth import MAX_FAILED_IN_A_ROW, SyntheticSource
from texocr.errors import TexocrError

SRC = Path(__file__).resolve().parents[1] / "src"
MISSING_PREVIEW = r"""#!/bin/sh
# a TeX without preview-latex-style: every document stops at the preamble
cat > doc.log <<'LOG'
This is pdfTeX, Version 3.141592653 (fake)
./doc.tex:4: LaTeX Error: File `preview.sty' not found.
! Emergency stop.
LOG
exit 1
"""


@pytest.fixture
def fake_tex(tmp_path: Path) -> Path:
    """A folder with `latex` (fails as above) and `dvipng` (never reached), to put first on PATH."""
    bin_dir = tmp_path / "fake-tex"
    bin_dir.mkdir()
    for name, body in (("latex", MISSING_PREVIEW), ("dvipng", "#!/bin/sh\nexit 1\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.fixture
def no_pip_renderer(tmp_path: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes the pip renderer's packages fail to import (as if not installed)."""
    hide = tmp_path / "hide-pip-renderer"
    hide.mkdir()
    for name in ("ziamath", "resvg_py"):
        (hide / f"{name}.py").write_text(f"raise ImportError('{name} is hidden by the test')\n")
    return hide


@pytest.fixture
def fresh_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget this process's probe outcomes and warnings (another test may have probed the real TeX)."""
    monkeypatch.setattr(probe, "_OUTCOMES", {})
    monkeypatch.setattr(probe, "_WARNED", set())


def _texocr(args: list[str], fake_tex: Path, *pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{fake_tex}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([*map(str, pythonpath), str(SRC)]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "texocr.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_data_render_stops_naming_the_missing_package(fake_tex: Path, no_pip_renderer: Path, tmp_path: Path) -> None:
    done = _texocr(["data", "render", "--n", "4", "--out", str(tmp_path / "out")], fake_tex, no_pip_renderer,
                   cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "lacks preview.sty (Debian package preview-latex-style)" in done.stderr
    assert not (tmp_path / "out" / "labels.jsonl").exists()


def test_data_render_falls_back_to_the_pip_renderer_with_one_warning(fake_tex: Path, tmp_path: Path) -> None:
    done = _texocr(["data", "render", "--n", "4", "--out", str(tmp_path / "out"), "--workers", "1"], fake_tex,
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "preview.sty" in line]
    assert len(warnings) == 1 and "using the pip renderer instead" in warnings[0], done.stderr
    stats = json.loads((tmp_path / "out" / "render_stats.json").read_text())
    assert stats["renderer"] == "pip" and stats["written"] == 4


@pytest.mark.parametrize("data", ["{train: [synthetic], synthetic_n: 64}",
                                  "{train: [synthetic], streaming: true, replay: 2, renderer: tex, render_chunk: 8}"],
                         ids=["in-memory", "streaming"])
def test_train_on_the_synthetic_stream_stops(fake_tex: Path, no_pip_renderer: Path, tmp_path: Path, data: str,
                                              tiny_model_dir: Callable[[str], Path]) -> None:
    config = tmp_path / "synthetic.yaml"
    config.write_text(f"model: {{name_or_path: {tiny_model_dir('qwen2_vl')}}}\n"
                      f"data: {data}\n"
                      f"train: {{output_dir: {tmp_path / 'run'}, max_steps: 2}}\n")
    done = _texocr(["train", "--config", str(config)], fake_tex, no_pip_renderer, cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "texocr train: error: the tex renderer lacks preview.sty" in done.stderr


def test_demo_stops_before_measuring_nothing(fake_tex: Path, no_pip_renderer: Path, tmp_path: Path) -> None:
    done = _texocr(["demo", "--quick", "--out", str(tmp_path / "demo")], fake_tex, no_pip_renderer, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr[-3000:]
    assert "lacks preview.sty" in done.stderr and "texocr demo: error: rendering the test set failed" in done.stderr
    assert "exact match" not in done.stdout


@pytest.mark.tex
@pytest.mark.skipif(shutil.which("latex") is None, reason="needs TeX")
def test_a_font_whose_package_is_missing_is_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     fresh_probes: None, caplog: pytest.LogCaptureFixture) -> None:
    """A TeX without euler.sty: the probe drops the Euler font (one warning) and keeps the rest."""
    bin_dir = tmp_path / "no-euler"
    bin_dir.mkdir()
    (bin_dir / "latex").write_text(
        "#!/bin/sh\nif grep -q '{euler}' doc.tex; then\n"
        "  printf \"./doc.tex:3: LaTeX Error: File \\`euler.sty' not found.\\n! Emergency stop.\\n\" > doc.log\n"
        f"  exit 1\nfi\nexec {shutil.which('latex')} \"$@\"\n")
    (bin_dir / "latex").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with caplog.at_level(logging.WARNING, logger="texocr.render"):
        renderer = get_renderer("tex", fonts=["euler", "cm-sans"])
        again = get_renderer("tex", fonts=["euler", "cm-sans"])
    assert "euler" not in renderer.fonts() and "cm-sans" in renderer.fonts() and again.fonts() == renderer.fonts()
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "lacks euler.sty (Debian package texlive-latex-recommended)" in warned[0]
    assert renderer.render_batch([r"\frac { a } { b }"], font="cm-sans")[0] is not None
    assert renderer.failures == {} and renderer.rendered == 1  # the probe's own renders are not counted


def test_a_stream_whose_samples_all_fail_stops(fresh_probes: None) -> None:
    """Every formula is refused (it reads a file): the stream raises after a bounded number of tries."""
    forbidden = [r"\input { /etc/passwd }", r"x \write18 { rm }"]
    src = SyntheticSource(n=100_000, seed=0, renderer="pip", formulas=forbidden, real_ratio=1.0)
    with pytest.raises(TexocrError, match=f"{MAX_FAILED_IN_A_ROW} formulas in a row failed to render.*forbidden"):
        list(src)
    assert len(src.skipped) == MAX_FAILED_IN_A_ROW
    short = SyntheticSource(n=10, seed=0, renderer="pip", formulas=forbidden, real_ratio=1.0)
    with pytest.raises(TexocrError, match="10 formulas in a row failed"):
        list(short)


def test_data_render_stops_after_one_round_when_nothing_renders(tmp_path: Path) -> None:
    from texocr.cli import main as cli

    formulas = tmp_path / "bad.txt"
    formulas.write_text("\\input { x }\n\\openin 1 = y\n")
    out = tmp_path / "out"
    assert cli(["data", "render", "--n", "50", "--out", str(out), "--renderer", "pip", "--formulas", str(formulas),
                "--real-ratio", "1.0", "--workers", "1"]) == 2
    assert not (out / "labels.jsonl").exists()
