"""What a wheel install gets: the demo's configs and the default model as package data, found without the repository.

The fast test builds the wheel (`pip wheel --no-deps`, about 4 s) and imports texocr from the unpacked wheel in
a folder outside the repository; the slow one installs it into a fresh virtualenv and runs `texocr demo --quick`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from texocr import demo
from texocr.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """texocr's wheel, built from a copy of the sources (the build writes build/ and *.egg-info beside them)."""
    work = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, work / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".",
                           "-w", str(work / "dist")], check=False, cwd=work, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    (built,) = (work / "dist").glob("texocr-*.whl")
    return built


def test_demo_configs_are_package_data() -> None:
    for name in ("default-lora.yaml", "scratch-full.yaml"):
        path = demo.demo_config(name)
        assert path.parent == Path(demo.__file__).parent.joinpath(*demo.CONFIG_PACKAGE)
        assert load_config(path).data.train == ["synthetic"]
    assert (ROOT / "configs" / "demo" / "default-lora.yaml").resolve() == demo.demo_config("default-lora.yaml")


def test_missing_demo_config_is_a_clear_error() -> None:
    with pytest.raises(demo.TexocrError, match="demo config nope.yaml is missing from the installed package"):
        demo.demo_config("nope.yaml")


def test_wheel_holds_the_configs_and_resolves_them_outside_the_repository(wheel: Path, tmp_path: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"texocr/assets/configs/demo/default-lora.yaml", "texocr/assets/configs/demo/scratch-full.yaml",
            "texocr/assets/default-model/model.safetensors", "texocr/assets/latex_vocab.txt"} <= names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import texocr.demo as d, texocr.models.loading as m; "
            "print(d.demo_config('default-lora.yaml')); print(m.resolve_model('default'))")
    done = subprocess.run([sys.executable, "-c", code], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-2000:]
    config, model = done.stdout.split()
    assert config == str(site / "texocr/assets/configs/demo/default-lora.yaml")
    assert model == str(site / "texocr/assets/default-model")


@pytest.mark.slow
def test_demo_runs_from_a_fresh_venv_install(wheel: Path, tmp_path: Path) -> None:
    """`pip install` of the wheel into a new virtualenv (its dependencies borrowed from this one), then the demo."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                            "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (purelib / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, transformers, ...
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(venv / "bin" / "texocr"), "demo", "--quick", "--out", str(tmp_path / "demo")],
                          check=False, cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert (tmp_path / "demo" / "before_after.json").is_file()
    assert str(purelib) in subprocess.check_output(
        [str(venv / "bin" / "python"), "-c", "import texocr; print(texocr.__file__)"], cwd=tmp_path, env=env, text=True)
