"""The argument parser of the package's plain commands (`smallrl-push`, `smallrl-data`, ...).

The training commands parse recipes with TRL's parser, which accepts `--max_steps` and `--max-steps` alike
(transformers' `HfArgumentParser` adds the dashed spelling). `CommandParser` gives the other commands the same
rule from the other side: each `--dashed-option` also answers to `--dashed_option`, so a user who learned one
spelling on `smallrl-grpo` is never told that an option of `smallrl-push` does not exist.
"""

from __future__ import annotations

import argparse


class CommandParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` whose long options with a dash also answer to their underscore spelling."""

    def add_argument(self, *names, **kwargs):
        aliases = ["--" + name[2:].replace("-", "_") for name in names if name.startswith("--") and "-" in name[2:]]
        return super().add_argument(*names, *[a for a in aliases if a not in names], **kwargs)
