"""User-facing errors.

A user's mistake (an unknown name, a missing path, batch sizes that do not divide) must end in one line
that names the field, the value and the fix, never in a traceback from deep inside TRL. Code raises
`ConfigError` for those; the entry points catch it and print its message.
"""

from __future__ import annotations

import difflib
import functools
import logging
import sys
from collections.abc import Callable, Iterable


class ConfigError(ValueError):
    """A mistake in a recipe, a command line or a user's file; the message says how to fix it."""


def unknown_name(field: str, value: str, valid: Iterable[str]) -> ConfigError:
    """Error for a name that is not in a registry: lists the valid names and the closest match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(str(value), valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{field}: unknown value {value!r}.{hint} Valid values: {', '.join(valid)}.")


def show_info_logs() -> None:
    """Show trl-smallrl's own info lines on stderr (precision chosen, resume point, dynamic-sampling rounds)."""
    package = logging.getLogger("trl_smallrl")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def exit_on_config_error(main: Callable) -> Callable:
    """Decorate an entry point so that a `ConfigError` prints one line and exits with status 2, and the package's
    info lines are shown."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        show_info_logs()
        try:
            return main(*args, **kwargs)
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
