"""Share a run on the Hugging Face Hub: the adapter (or the merged model) with its model card (`model_card`).

Only an allow-list of files is uploaded (weights, tokenizer, card, plots, the redacted config and the trainer
state), never `training_args.bin`, optimizer states or checkpoints. A dry run writes exactly the folder that
would be uploaded; the upload sends that folder. The token is read by `huggingface_hub` itself (HF_TOKEN or
`hf auth login`): it is never an argument, and every folder is checked for it before it is written out or
uploaded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from trl_smallrl import atomic
from trl_smallrl.cli import CommandParser
from trl_smallrl.errors import ConfigError, entry_point
from trl_smallrl.evaluation import results_table
from trl_smallrl.model_card import build_model_card, eval_results, recipe_yaml
from trl_smallrl.models import (
    MERGED_BASE_FILE,
    embedded_source,
    is_hub_id,
    merged_adapter_path,
    model_lineage,
    public_model_id,
)
from trl_smallrl.plots import load_log_history, plot_pass_at_k, plot_run
from trl_smallrl.recipe import RESOLVED_CONFIG_FILE
from trl_smallrl.redaction import redact_secrets

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MODEL_PATTERNS = ("config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json")
TOKENIZER_PATTERNS = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_config(run_dir: Path) -> dict:
    """The run's saved config; a checkpoint-N folder uses its run's (the config is saved once per run)."""
    config = _read_json(run_dir / RESOLVED_CONFIG_FILE)
    if not config and run_dir.name.startswith("checkpoint-"):
        config = _read_json(run_dir.parent / RESOLVED_CONFIG_FILE)
    return config


def _copy_matching(source: Path, target: Path, patterns: Sequence[str]) -> list[str]:
    copied = []
    for pattern in patterns:
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, target / path.name)
                copied.append(path.name)
    return copied


def _current_token() -> str | None:
    from huggingface_hub import get_token

    return get_token()


def check_no_token(folder: str | os.PathLike) -> None:
    """Refuse a folder in which any file contains the Hub token in use (HF_TOKEN or the stored login)."""
    token = _current_token()
    if not token:
        return
    for path in Path(folder).rglob("*"):
        if path.is_file() and token.encode() in path.read_bytes():
            raise ConfigError(f"upload: {path.name} contains your Hub token; remove it from the run before pushing.")


def prepare_upload(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    title: str | None = None,
    eval_json: str | os.PathLike | None = None,
    recipe: str | os.PathLike | None = None,
    merge: bool = False,
    base_model: str | None = None,
) -> Path:
    """Write the folder an upload sends: weights, tokenizer, README.md (the card), plots, redacted records.

    `run_dir` is a training output_dir holding a PEFT adapter (or a full model). `merge` writes the adapter
    merged into its base instead. The folder is built beside `out_dir` and moved into place at the end.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    adapter_config = _read_json(run_dir / "adapter_config.json")
    if not adapter_config and not (run_dir / "config.json").is_file():
        raise ConfigError(
            f"run_dir: {str(run_dir)!r} holds no adapter_config.json nor config.json; point it at a training "
            "output_dir (or one of its checkpoint-N folders)."
        )
    if merge and not adapter_config:
        raise ConfigError(f"--merge: {str(run_dir)!r} is a full model, not an adapter; drop --merge.")
    if adapter_config and not merge and (run_dir / MERGED_BASE_FILE).is_file():
        raise ConfigError(
            f"--merge: {str(run_dir)!r} hard-reset its LoRA adapter (resets), so the adapter works only on the base "
            "with the earlier adapters merged in, which no reader has; push it with --merge."
        )
    kind = "merged" if merge else "adapter" if adapter_config else "full"
    config = _run_config(run_dir)
    base_source = adapter_config.get("base_model_name_or_path") or config.get("model_name_or_path") or str(run_dir)
    lineage = model_lineage(base_source)
    # A merged upload loads on its own: name the model the chain began with. An adapter needs its exact base.
    base_model = base_model or (public_model_id(base_source) if kind == "adapter" else lineage[0])
    if kind == "adapter" and not is_hub_id(base_model):
        print(
            f"warning: base model {base_model!r} is not a Hub id, so readers cannot load the adapter; pass "
            "--base-model ORG/NAME (its copy on the Hub) or push the merged model with --merge."
        )
    try:
        log_history = load_log_history(run_dir)
    except ConfigError:
        log_history = []

    with atomic.folder(out_dir) as staging:
        if merge:
            _copy_matching(merged_adapter_path(run_dir, field="run_dir"), staging, MODEL_PATTERNS)
        elif adapter_config:
            _copy_matching(run_dir, staging, ADAPTER_FILES)
            adapter_config["base_model_name_or_path"] = base_model  # a Hub id, not this machine's cache path
            (staging / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True))
        else:
            _copy_matching(run_dir, staging, MODEL_PATTERNS)
        _copy_matching(run_dir, staging, TOKENIZER_PATTERNS)
        if config:
            (staging / RESOLVED_CONFIG_FILE).write_text(json.dumps(redact_secrets(config), indent=2, sort_keys=True))
        if log_history:
            (staging / "trainer_state.json").write_text(json.dumps({"log_history": log_history}, indent=1))
        plot_files = [str(p.relative_to(staging)) for p in plot_run(staging, staging / "plots")] if log_history else []
        result = None
        if eval_json is not None:
            plot_files += [str(p.relative_to(staging)) for p in plot_pass_at_k(eval_json, staging / "plots")]
            result = json.loads(Path(eval_json).read_text())
            (staging / "eval_results.json").write_text(json.dumps(result, indent=2))
        card = build_model_card(
            title=title or run_dir.resolve().name,
            base_model=base_model,
            kind=kind,
            embedded_source=embedded_source(base_source),
            config=config,
            lineage=lineage,
            log_history=log_history,
            recipe_yaml=recipe_yaml(config, recipe, base_model),
            eval_table=results_table(result) if result else None,
            eval_results=eval_results(result, model_path=run_dir) if result else (),
            plot_files=plot_files,
        )
        (staging / "README.md").write_text(card)
        check_no_token(staging)
    return out_dir


def push(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload from trl-smallrl",
) -> str:
    """Upload a folder written by `prepare_upload` to `repo_id` (created if missing); returns the commit URL.

    `token` defaults to huggingface_hub's own (HF_TOKEN, else the stored login); it is only handed to `HfApi`.
    """
    from huggingface_hub import HfApi

    check_no_token(folder)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=commit_message
    )
    return str(getattr(commit, "commit_url", commit))


def push_run(run_dir: str | os.PathLike, repo_id: str | None = None, *, token: str | None = None, **options) -> str:
    """Build the upload of a finished run in a temporary folder and push it (`push_to_hub: true` ends here).

    `repo_id` defaults to the run's `hub_model_id` (from smallrl_config.json); `options` go to `prepare_upload`,
    except `private` (default: the run's `hub_private_repo`).
    """
    config = _run_config(Path(run_dir))
    repo_id = repo_id or config.get("hub_model_id")
    if not repo_id:
        raise ConfigError(
            "hub_model_id: no repository named; set hub_model_id in the recipe or pass --repo-id ORG/NAME."
        )
    private = bool(options.pop("private", None) or config.get("hub_private_repo"))
    # A run with hard resets can only be shared merged (its adapter sits on merged weights): merge it on push.
    options.setdefault("merge", (Path(run_dir) / MERGED_BASE_FILE).is_file())
    with tempfile.TemporaryDirectory(prefix="smallrl-push-") as tmp:
        folder = prepare_upload(run_dir, Path(tmp) / "upload", title=repo_id, **options)
        return push(folder, repo_id, private=private, token=token)


@entry_point
def main(argv: list[str] | None = None) -> None:
    """`smallrl-push RUN_DIR [--repo-id ORG/NAME] [--eval results.json] [--merge] [--dry-run DIR]`."""
    parser = CommandParser(prog="smallrl-push", description=main.__doc__)
    parser.add_argument("run_dir", help="training output_dir with the adapter (or a checkpoint-N folder)")
    parser.add_argument("--repo-id", help="Hub repository; default: hub_model_id of the run's recipe")
    parser.add_argument("--eval", dest="eval_json", help="results.json of smallrl-eval, for the card's table")
    parser.add_argument("--recipe", help="the YAML recipe of the run, shown in the card (secrets redacted)")
    parser.add_argument("--merge", action="store_true", help="upload the adapter merged into its base model")
    parser.add_argument("--base-model", help="Hub id of the base model when the run used a local folder")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--dry-run", metavar="DIR", help="write the folder that would be uploaded to DIR; no upload")
    args = parser.parse_args(argv)
    options = {"eval_json": args.eval_json, "recipe": args.recipe, "merge": args.merge, "base_model": args.base_model}
    if args.dry_run:
        config = _run_config(Path(args.run_dir))
        title = args.repo_id or config.get("hub_model_id")
        folder = prepare_upload(args.run_dir, args.dry_run, title=title, **options)
        print(
            f"dry run: the upload would be exactly {folder} ({sum(1 for p in folder.rglob('*') if p.is_file())} files)"
        )
        return
    print(push_run(args.run_dir, args.repo_id, private=args.private, **options))


if __name__ == "__main__":
    main()
