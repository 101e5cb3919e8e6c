"""Experiment tracking that works on a first machine: no account, no prompt, no crash mid-launch.

transformers' trackers start inside `Trainer.__init__`. Weights & Biases without an API key either asks for
one on the terminal or fails; a training launch must do neither. So, before a trainer is built, a run that
reports to wandb without credentials is switched to wandb's offline mode (the run is kept on disk, and
`wandb sync <folder>` uploads it later), and a tracker that is named but not installed is refused with the
command that installs it, instead of an error from inside transformers. Completion tables come from TRL
itself (`log_completions: true` logs them to wandb and trackio).
"""

from __future__ import annotations

import importlib.util
import netrc
import os
from pathlib import Path
from urllib.parse import urlparse

from trl_smallrl.errors import ConfigError, unknown_name

# Trackers we check, with the package that provides each and how to install it.
TRACKER_PACKAGES = {
    "wandb": ("wandb", "pip install wandb"),
    "trackio": ("trackio", "pip install 'trl-smallrl[tracking]'"),
    "tensorboard": ("tensorboard", "pip install 'trl-smallrl[tracking]'"),
}
DEFAULT_PROJECT = "trl-smallrl"


def wandb_has_credentials() -> bool:
    """True when wandb can log in without asking: an API key in the environment or in the netrc file."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def setup_tracking(training_args) -> list[str]:
    """Prepare the trackers in `training_args.report_to`; call it in an entry point before building a trainer.

    - wandb without credentials (and no WANDB_MODE chosen by the user): WANDB_MODE=offline.
    - wandb: the project defaults to "trl-smallrl" unless WANDB_PROJECT is set; trackio: likewise, unless the
      recipe sets `project` (transformers' default "huggingface" is replaced).
    - a tracker that is not installed: `ConfigError` naming the install command.
    Returns the trackers in use. Writes nothing to disk and never reads or prints a key.
    """
    report_to = training_args.report_to or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    if report_to in (["none"], []):
        return []
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for tracker in report_to:
        if tracker not in INTEGRATION_TO_CALLBACK and tracker not in ("all", "none"):
            raise unknown_name("report_to", tracker, [*INTEGRATION_TO_CALLBACK, "all", "none"])
        package, install = TRACKER_PACKAGES.get(tracker, (None, None))
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"report_to: {tracker!r} is not installed; run `{install}` or drop it from report_to.")
    if "wandb" in report_to or "all" in report_to:
        os.environ.setdefault("WANDB_PROJECT", DEFAULT_PROJECT)
        if "WANDB_MODE" not in os.environ and not wandb_has_credentials():
            os.environ["WANDB_MODE"] = "offline"
            print(
                "wandb: no API key found; logging offline to ./wandb (upload later: `wandb sync wandb/offline-run-*`)."
            )
    if getattr(training_args, "project", None) == "huggingface":
        training_args.project = DEFAULT_PROJECT
    return report_to
