# imgedit: `make serve` serves the built-in tiny model; `make test` runs the checks and the tests.
# Both create .venv on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# The PyTorch to install when .venv has none. The tiny model and the tests need
# only a CPU build: where pip finds no local CPU wheel, a smaller download is
# TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu".
TORCH ?= torch==2.13.0
PORT ?= 3000
IMGEDIT_MODEL ?= tiny:qwen-image-edit-plus

.PHONY: install serve test e2e lint docs format fuzz bench bench-gpu bento image-smoke system-deps clean

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml tests/integration/clients/node/package-lock.json
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip show --quiet torch >/dev/null 2>&1 || $(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[test,build,docs]"
	cd tests/integration/clients/node && npm ci --no-audit --no-fund --silent
	@touch $@

serve: install
	IMGEDIT_MODEL="$(IMGEDIT_MODEL)" $(BIN)/bentoml serve service:ImageEdit --port $(PORT)

# REQUIRE_CHROMIUM=1: the playground's browser tests fail, rather than skip, without Chromium;
# REQUIRE_DEPLOY_TOOLS=1: so do the deployment tests (tests/deploy) without kubectl, promtool or HAProxy.
test: install system-deps lint docs
	REQUIRE_CHROMIUM=1 REQUIRE_NODE=1 REQUIRE_DEPLOY_TOOLS=1 $(BIN)/pytest --durations=30

# Only the playground's end-to-end tests (headless Chromium against a real server); `make test` runs them too.
e2e: install system-deps
	REQUIRE_CHROMIUM=1 $(BIN)/pytest -m e2e

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The docs site from docs/ (see mkdocs.yml), into site/; a broken link or an unlisted page fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Coverage-guided fuzzing of the request parsers (fuzz/): FUZZ_SECONDS split over the targets; crashing
# inputs land in fuzz/crashes/ and fail it. `make test` runs each target briefly (tests/test_fuzz.py).
FUZZ_SECONDS ?= 600
fuzz: install
	$(BIN)/python -m fuzz --seconds $(FUZZ_SECONDS)

# The CPU benchmarks with the tiny models (about an hour and a half on 2 cores, the 30-minute soak included);
# each writes its section of docs/benchmarks.md.
BENCH_RESULTS ?= docs/benchmarks.md
bench: install
	$(BIN)/python -m bench.overhead --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.concurrency --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.memory --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.startup --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.fusion --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.png_encoding --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.quantization --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.routing --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.parallel --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.lora --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.levers --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.models --write $(BENCH_RESULTS)
	$(BIN)/python -m bench.soak --write $(BENCH_RESULTS)

# Full-size Qwen-Image-Edit-2511 (random weights) on a GPU with 80 GB: eager against the fast path,
# and against fp8 and int8 weights (fp8 needs compute capability 8.9 or newer).
bench-gpu: install
	$(BIN)/python -m bench.gpu_qwen --quantize fp8 int8 --levers --write $(BENCH_RESULTS)

# A Bento of the current tree. Settings travel in it as arguments, e.g.
#   make bento ARGS="--arg model=bentoml:qwen-image-edit-2511"
bento: install
	$(BIN)/bentoml build $(ARGS)

# Builds the OCI image of a Bento carrying a tiny model, runs it and checks its answers (slow).
image-smoke: install
	PATH="$(abspath $(BIN)):$$PATH" scripts/image-smoke.sh

# The curl tests run curl and jq; the playground's end-to-end tests run Debian's chromium
# (driven by Playwright's Python package; Playwright's own browser downloads are not used).
# tests/deploy runs promtool (Debian's prometheus package; on a host with systemd, Debian also starts
# its server: `systemctl disable --now prometheus` if unwanted) and haproxy on loopback.
system-deps:
	@command -v curl >/dev/null && command -v jq >/dev/null && command -v chromium >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq curl jq chromium >/dev/null; }
	@command -v promtool >/dev/null && PATH="$$PATH:/usr/sbin" command -v haproxy >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends prometheus haproxy >/dev/null; }

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info site
