"""User-facing errors.

A user's mistake (an unknown name, a missing path, batch sizes that do not divide) must end in one line
that names the field, the value and the fix, never in a traceback from deep inside TRL. Code raises
`ConfigError` for those, and `RunStopped` when a run stops itself; every command's main function is wrapped
in `entry_point`, which prints the message as one line.
"""

from __future__ import annotations

import difflib
import functools
import logging
import sys
from collections.abc import Callable, Iterable


class ConfigError(ValueError):
    """A mistake in a recipe, a command line or a user's file; the message says how to fix it."""


class RunStopped(RuntimeError):
    """A run stopped on purpose before it could go wrong (a NaN loss, say); the message says where and why."""


def unknown_name(field: str, value: str, valid: Iterable[str]) -> ConfigError:
    """Error for a name that is not in a registry: lists the valid names and the closest match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{field}: unknown value {value!r}.{hint} Valid values: {', '.join(valid)}.")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a line is logged (a test harness swaps it between commands)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def show_info_logs() -> None:
    """Show trl-smallrl's own info lines on stderr (precision chosen, resume point, dynamic-sampling rounds)."""
    package = logging.getLogger("trl_smallrl")
    if not package.handlers:
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def entry_point(main: Callable) -> Callable:
    """Decorate a command's main function: the package's info lines are shown, a `ConfigError` ends the command
    with one line and status 2, a `RunStopped` with one line and status 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        show_info_logs()
        try:
            return main(*args, **kwargs)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except RunStopped as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper
