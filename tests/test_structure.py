"""The house's shape, measured from the code: configs are leaves, training does not load eval or plots, modules
stay small, and the trainer's docstring names every module that acts in a GRPO step."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import trl_smallrl
from trl_smallrl import grpo_trainer

PACKAGE = Path(trl_smallrl.__file__).parent
ROOT = PACKAGE.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    return names | {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_configs_import_nothing_of_the_package_but_its_errors():
    """configs.py holds values: no hardware decision, curriculum or resets logic at parse time, so every module may
    import it."""
    imported = {name for name in _imports(PACKAGE / "configs.py") if name.startswith("trl_smallrl")}
    assert imported == {"trl_smallrl.errors"}


def test_training_loads_neither_the_eval_nor_the_plots():
    """Starting a GRPO or SFT run imports the run loop; the push (which draws plots and cards) loads only to push."""
    code = (
        "import sys, trl_smallrl.grpo, trl_smallrl.sft; "
        "print(sorted(m for m in sys.modules if m.startswith('trl_smallrl')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "trl_smallrl.grpo_trainer" in loaded
    for module in ("trl_smallrl.evaluation", "trl_smallrl.plots", "trl_smallrl.hub", "trl_smallrl.model_card"):
        assert repr(module) not in loaded, f"{module} is imported by a training run"


def test_no_module_is_over_400_lines():
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tools").glob("*.py")]
    long = {str(f.relative_to(ROOT)): n for f in files if (n := len(f.read_text().splitlines())) > 400}
    assert not long, f"split these modules: {long}"


def test_the_trainer_docstring_names_every_module_of_a_step():
    """The step order in grpo_trainer's docstring names each mixin's module, and the trainer is built of them."""
    hooks = sorted(p.stem for p in PACKAGE.glob("grpo_*.py") if p.stem != "grpo_trainer")
    assert hooks, "no grpo_* hook modules found"
    for module in hooks:
        assert f"`{module}`" in grpo_trainer.__doc__, f"grpo_trainer's step order does not name {module}"
    built_from = {cls.__module__.removeprefix("trl_smallrl.") for cls in grpo_trainer.SmallRLGRPOTrainer.__mro__}
    assert set(hooks) <= built_from
