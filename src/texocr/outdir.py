"""Output folders: the one rule of every command that writes a folder of results (`data render`, `eval`, `demo`).

    out = prepare_output_dir("runs/eval", "eval", overwrite=args.overwrite)

- a new or empty folder is used, and marked as this command's (a `.texocr-<command>` file);
- a folder with this command's marker is a previous run's output: it is replaced, so a command can be re-run;
- any other non-empty folder is refused, unless `overwrite`: then files are written over it and nothing in it
  is deleted. Such a folder is not marked, so that no later run deletes what the user keeps there.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from texocr.errors import TexocrError


def marker_name(command: str) -> str:
    """`data render` -> `.texocr-data-render`: the file that says which command wrote a folder."""
    return ".texocr-" + "-".join(command.split())


def prepare_output_dir(out: str | Path, command: str, *, overwrite: bool = False) -> Path:
    """Make `out` ready for `command`'s outputs under the rule above; returns it as a Path."""
    out = Path(out)
    marker = out / marker_name(command)
    if out.exists() and not out.is_dir():
        raise TexocrError(f"--out {out}: a file, not a folder")
    if marker.is_file():
        shutil.rmtree(out)
        print(f"texocr {command}: replacing the previous `texocr {command}` output in {out}", file=sys.stderr)
    elif out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise TexocrError(f"--out {out} is not empty and was not written by `texocr {command}`: "
                              "remove it, choose another --out, or pass --overwrite to write over its files")
        print(f"texocr {command}: --overwrite: writing over the files in {out}", file=sys.stderr)
        return out
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"written by `texocr {command}`; the next `texocr {command}` with this --out replaces "
                      "this folder\n", encoding="utf-8")
    return out
