import subprocess
import sys
import time

from texocr.cli import COMMANDS, main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "texocr", *args], capture_output=True, text=True, check=False)


def test_help_is_fast_and_lists_commands():
    t = time.perf_counter()
    r = _run("--help")
    elapsed = time.perf_counter() - t
    assert r.returncode == 0
    for name in COMMANDS:
        assert name in r.stdout
    # --help must not import torch/transformers; a generous bound that only a heavy import would break
    assert elapsed < 5, elapsed


def test_help_imports_no_heavy_library():
    code = "import sys; from texocr.cli import build_parser; build_parser(); print('torch' in sys.modules, 'transformers' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.stdout.strip() == "False False"


def test_unknown_command_is_one_line_error():
    r = _run("frobnicate")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "invalid choice" in lines[0] and "frobnicate" in lines[0]


def test_unknown_option_is_an_error(capsys):
    rc = None
    try:
        rc = main(["data", "stats", "x", "--bogus"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2
    assert "--bogus" in capsys.readouterr().err


def test_version():
    r = _run("--version")
    assert r.returncode == 0 and r.stdout.startswith("texocr ")
