"""Rendering untrusted LaTeX (what `POST /v1/render` does) cannot read files or run programs, even when a formula
slips past `check_formula`: the TeX run itself has no shell escape and paranoid file access.

Each test feeds the renderer's own TeX job (`_TexJob`, check bypassed) a formula that reads a file, writes one or
runs a command, and checks that nothing happened; a control run of the same document through plain `latex` with
the protection lifted shows that it would have happened, so the test can fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from texocr.data.render import _TexJob, check_formula

pytestmark = [pytest.mark.tex, pytest.mark.skipif(
    shutil.which("latex") is None or shutil.which("dvipng") is None, reason="latex/dvipng not installed")]


def _through_renderer(formula: str) -> tuple[object, str]:
    """The renderer's TeX job on one formula, without the pre-check: (image or None, failure detail)."""
    job = _TexJob([formula], [1.0], "cm", 100, True, 20.0)
    results: list = [None]
    job.solve([0], results, retry=True)
    return results[0].image, results[0].detail


def _plain_latex(formula: str, cwd: Path, env: dict[str, str], *flags: str) -> str:
    """The same document through latex with the given environment and flags (the control); returns the log."""
    job = _TexJob([formula], [1.0], "cm", 100, True, 20.0)
    (cwd / "doc.tex").write_text(job._document([0])[0])
    subprocess.run(["latex", *flags, "-interaction=nonstopmode", "doc.tex"], cwd=cwd, env={**os.environ, **env},
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60, check=False)
    return (cwd / "doc.log").read_text(encoding="latin-1")


def test_tex_does_not_read_files_outside_its_folder(tmp_path):
    secret = tmp_path / "secret.tex"
    secret.write_text("SECRETWORD\n")
    formula = rf"x \input{{{secret}}}"
    assert check_formula(formula) is not None  # refused up front, too; below it is not asked
    assert _through_renderer("x SECRETWORD")[0] is not None  # the job itself works
    image, detail = _through_renderer(formula)
    assert image is None and detail  # TeX could not open it: the formula fails, nothing of the file rendered
    control = tmp_path / "control"
    control.mkdir()
    log = _plain_latex(formula, control, {"openin_any": "a"})
    assert str(secret) in log and "not found" not in log  # unrestricted TeX does read it


def test_tex_does_not_write_files_outside_its_folder(tmp_path):
    target = tmp_path / "written.tex"
    formula = rf"x \immediate\openout5={target} \immediate\write5{{owned}} \immediate\closeout5"
    _through_renderer(formula)
    assert not target.exists()
    control = tmp_path / "control"
    control.mkdir()
    _plain_latex(formula, control, {"openout_any": "a"})
    assert target.read_text().strip() == "owned"  # unrestricted TeX does write it


def test_tex_does_not_run_commands(tmp_path):
    marker = tmp_path / "ran"
    formula = rf"x \immediate\write18{{touch {marker}}}"
    _through_renderer(formula)
    assert not marker.exists()
    control = tmp_path / "control"
    control.mkdir()
    _plain_latex(formula, control, {"shell_escape": "t"}, "-shell-escape")
    assert marker.exists()  # with shell escape on, the same formula runs the command
