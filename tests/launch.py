"""The `accelerate launch` command of the two-process tests, as users launch a run (one home for the tests that need
one)."""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def accelerate_launch(config_file: Path, *args: str) -> list[str]:
    """`accelerate launch --config_file CONFIG ARGS` on a free port, so two launches in one test session (or a port
    left in TIME_WAIT by the last one) never meet on accelerate's default 29500."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
            "--main_process_port", str(port), *args]  # fmt: skip
