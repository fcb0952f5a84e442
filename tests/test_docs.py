"""The docs stay true to the code: every command the README documents parses (its options exist in the
command's --help), the cheap ones run on tiny data, and every module, path and name docs/architecture.md
mentions exists (and every module of src/texocr is mentioned there)."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from texocr.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ARCH = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")


def _commands(text: str) -> list[list[str]]:
    """`texocr ...` lines of the markdown's bash blocks, as argument lists (comments and [optional] parts cut)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL):
        for line in block.splitlines():
            line = re.sub(r"\s#.*$", "", line).strip()
            line = re.sub(r"\[[^\]]*\]", "", line)  # `[--json] [--stream]` are shown as optional
            words = shlex.split(line) if line else []
            while words and "=" in words[0] and not words[0].startswith("-"):
                words = words[1:]  # an environment assignment
            if words and Path(words[0]).name == "texocr":
                out.append(words[1:])
    return out


def _help(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*args, "--help"])
    assert stop.value.code == 0, args
    return capsys.readouterr().out


COMMANDS = _commands(README)


def test_the_readme_documents_commands():
    assert {c[0] for c in COMMANDS} >= {"data", "train", "export", "eval", "predict"}


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c)[:60] for c in COMMANDS])
def test_documented_command_parses(args, capsys):
    """Each documented command's subcommand exists and every option it uses is in that subcommand's --help."""
    sub = args[:2] if args[0] == "data" else args[:1]
    text = _help(capsys, sub)
    accepts_overrides = args[0] in ("train", "eval", "serve")  # dotted config overrides: --section.key VALUE
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        opt = arg.split("=")[0]
        if accepts_overrides and "." in opt:
            from texocr.config import load_config

            value = arg.split("=", 1)[1] if "=" in arg else args[i + 1]
            load_config(None, [opt, value])  # a known key taking the documented value, or ConfigError
            continue
        assert re.search(rf"(^|[\s,\[]){re.escape(opt)}\b", text), f"{' '.join(args)}: {opt} is not an option"


def test_documented_data_commands_run_on_tiny_data(tmp_path, capsys):
    """`texocr data render / stats / overlap` as the README writes them, on 2 samples."""
    from texocr.data.render import available_renderers

    if not available_renderers():
        pytest.skip("no renderer (TeX or ziamath + resvg-py) installed: data render cannot run here")
    render = next(c for c in COMMANDS if c[:2] == ["data", "render"])
    args = list(render)
    args[args.index("--n") + 1] = "2"
    args[args.index("--out") + 1] = str(tmp_path / "synth")
    assert main([*args, "--workers", "1"]) == 0
    stats = next(c for c in COMMANDS if c[:2] == ["data", "stats"])
    assert main([*stats[:2], str(tmp_path / "synth")]) == 0
    overlap = next(c for c in COMMANDS if c[:2] == ["data", "overlap"])
    assert main([*overlap[:2], str(tmp_path / "synth"), str(tmp_path / "synth")]) == 0
    assert "samples" in capsys.readouterr().out


def test_readme_make_targets_python_api_and_links_exist():
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"\bmake (\w+)", README):
        assert re.search(rf"^{target}:", makefile, flags=re.MULTILINE), f"make {target}: no such target"
    for module, name in re.findall(r"from (texocr[\w.]*) import (\w+)", README):
        assert hasattr(importlib.import_module(module), name), f"{module}.{name}"
    assert "../shared" not in README, "the README points outside the repository (a clone has no ../shared)"
    assert "docs/architecture.md" in README
    for link in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


def test_architecture_names_only_what_exists():
    paths = set(re.findall(r"`((?:src|configs|bench|docs|tests|scripts)/[\w./-]*)`", ARCH))
    assert len(paths) >= 3
    for p in paths:
        assert (ROOT / p).exists(), f"docs/architecture.md names {p}, which does not exist"
    table = ARCH[ARCH.index("## Modules"): ARCH.index("## Contracts")]  # names there are under src/texocr
    modules = set(re.findall(r"`((?:[\w]+/)?[\w]+\.py|[\w]+/)`", table))
    for m in modules:
        assert (ROOT / "src" / "texocr" / m).exists() or (ROOT / m).exists(), f"{m} is not in src/texocr"
    for dotted in set(re.findall(r"`(texocr(?:\.\w+)+)", ARCH)):
        parts = dotted.split(".")
        for k in range(len(parts), 0, -1):  # the longest importable prefix, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:k]))
            except ModuleNotFoundError:
                continue
            for attr in parts[k:]:
                assert hasattr(obj, attr), f"docs/architecture.md names {dotted}: no {attr}"
                obj = getattr(obj, attr)
            break
        else:
            pytest.fail(f"docs/architecture.md names {dotted}, which cannot be imported")


def test_every_module_is_in_the_architecture():
    named = set(re.findall(r"`([\w/]+\.py)`", ARCH))
    src = ROOT / "src" / "texocr"
    missing = [str(p.relative_to(src)) for p in src.rglob("*.py")
               if p.name != "__init__.py" and str(p.relative_to(src)) not in named]
    assert not missing, f"modules that docs/architecture.md does not describe: {missing}"
