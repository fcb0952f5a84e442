"""The `texocr` command: dispatch only.

Each subcommand lives in a stage module that exposes `add_arguments(parser)` and `main(args) -> int`,
and imports its heavy libraries (torch, transformers) inside `main`, so `texocr --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from texocr import __version__

# name -> (module, one-line help). A command is listed here only once it works.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("texocr.data.cli", "render synthetic data, inspect a data set, check train/test overlap"),
    "train": ("texocr.train", "fine-tune a model (full, LoRA or QLoRA) from a config"),
    "export": ("texocr.export", "merge a LoRA adapter into its base model and save it"),
    "eval": ("texocr.evaluate", "evaluate a model on a data set: metrics, predictions and an HTML report"),
    "predict": ("texocr.predict", "transcribe images (files, a folder, or stdin) to LaTeX"),
    "serve": ("texocr.serve", "an HTTP API and a web page: upload, paste or draw math, get LaTeX"),
    "demo": ("texocr.demo", "measure a model, fine-tune it on the CPU, measure again (what `make demo` runs)"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one clear line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only `command`'s module is imported to describe its arguments."""
    parser = _Parser(prog="texocr", description="Images of mathematics to LaTeX.")
    parser.add_argument("--version", action="version", version=f"texocr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0 if not argv else 2
    if extra and not getattr(args, "_accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    from texocr.config import ConfigError
    from texocr.errors import TexocrError

    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args) or 0)
    except (TexocrError, ConfigError) as e:
        print(f"texocr {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("texocr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
