"""Files and folders that appear whole or not at all.

A run is killed at any moment (a preempted job, a full disk, Ctrl-C twice), and whatever it was writing is then
read by the next command: a resume, a plot, an upload. Every file and folder the package writes is therefore
written beside its target under a hidden temporary name and renamed into place when complete; a rename within
one folder is atomic, so a reader sees the old version or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def write_file(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` with a temporary path beside `path`, then rename the result over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_file(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, value: Any, **dumps_options) -> Path:
    return write_text(path, json.dumps(value, **dumps_options))


def replace_folder(staging: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Move a complete `staging` folder to `target`, replacing an older `target` (moved aside, then removed)."""
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


@contextlib.contextmanager
def folder(target: str | os.PathLike) -> Iterator[Path]:
    """An empty staging folder beside `target` that becomes `target` when the block ends without an error.

    On an error the staging folder is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield staging
        replace_folder(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
