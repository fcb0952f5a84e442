"""scripts/tex_bundle.sh: the relocatable TeX bundle builds and texocr renders with it (only where TeX is installed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from texocr.data.render import TexRenderer

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.tex,
    pytest.mark.skipif(not all(shutil.which(t) for t in ("pdftex", "dvipng", "kpsewhich", "vftovp", "dpkg-deb")),
                       reason="needs a Debian TeX Live install (pdftex, dvipng, kpsewhich, vftovp)"),
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("texbundle")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "tex_bundle.sh"), str(out)], check=False, env={
        "PATH": "/usr/local/bin:/usr/bin:/bin", "TEXBUNDLE_NO_TAR": "1"}, capture_output=True, text=True, timeout=120)
    if r.returncode == 3:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "texbundle"


def test_bundle_renders_with_its_own_tree(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{bundle / 'bin'}:/usr/bin:/bin")
    found = subprocess.run(["kpsewhich", "article.cls", "cmr10.pfb", "zptmcm7t.tfm"],
                           check=False, capture_output=True, text=True)
    paths = found.stdout.split()
    assert len(paths) == 3 and all(p.startswith(str(bundle.resolve())) for p in paths), found.stdout
    r = TexRenderer()
    assert shutil.which("latex") == str(bundle / "bin" / "latex")
    for font in ("cm", "times"):
        images = r.render_batch([r"\frac{a}{b}", r"\sum_{n=1}^{\infty} \mathbb{R}^n", r"\mathcal{L} = \alpha"],
                                font=font, dpi=150)
        assert all(im is not None and im.width > 10 for im in images), (font, r.failures)
