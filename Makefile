# Two commands do all the set-up: `make demo` runs the main example, `make test`
# runs the whole suite. Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Two workers: the suite is sized for a 2-core machine.
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-internals test-optax lint typecheck docs docs-serve format clean

# MathJax ships with the site, so that its formulas render offline: the files
# the site loads, from the npm registry's package (not kept in the repository).
MATHJAX_VERSION := 3.2.2
MATHJAX := docs/javascripts/vendor/mathjax

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e ".[test,examples,docs]"
	# torch is optional: its cross-checks are skipped where no CPU build installs.
	-$(BIN)/python -m pip install -q "torch==2.13.0"
	# The authors' (or their ports') PyTorch optimizers, test-only oracles; each
	# cross-check is skipped where its package does not install.
	-$(BIN)/python -m pip install -q "pytorch-optimizer==4.1.0"
	-$(BIN)/python -m pip install -q --no-deps "schedulefree==1.4.1" \
		"prodigyopt==1.1.2" "adam-mini==1.1.1" "torch-optimi==0.3.3" "sophia-opt==0.2.2"
	touch $(STAMP)

setup: $(STAMP)

# The CNN example on Fashion-MNIST (Debian's dataset-fashion-mnist), about two
# minutes on two cores; it prints the test accuracy at the end. Each run starts
# afresh: the script refuses a workdir that holds another run's checkpoints.
demo: setup
	rm -rf workdir/fashion_mnist
	$(BIN)/python examples/cifar10/train.py --dataset fashion_mnist \
		--workdir workdir/fashion_mnist

lint: setup
	$(BIN)/ruff check adamx tests examples benchmarks docs
	$(BIN)/ruff format --check adamx tests examples benchmarks docs

typecheck: setup
	$(BIN)/mypy adamx

$(MATHJAX)/tex-mml-chtml.js:
	rm -rf $(MATHJAX) && mkdir -p $(MATHJAX)
	cd $(MATHJAX) && npm pack --silent mathjax@$(MATHJAX_VERSION) > /dev/null \
		&& tar xzf mathjax-$(MATHJAX_VERSION).tgz --strip-components=2 \
			package/es5/tex-mml-chtml.js package/es5/output/chtml/fonts/woff-v2 \
		&& rm mathjax-$(MATHJAX_VERSION).tgz

# Strict: a broken link, a missing page or a docstring reference to nothing
# fails; then every page must load nothing from elsewhere and hold no raw TeX.
docs: setup $(MATHJAX)/tex-mml-chtml.js
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
	$(BIN)/python docs/check_site.py site

docs-serve: setup $(MATHJAX)/tex-mml-chtml.js
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

test: lint typecheck docs
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist worksteal

# Optax's own test files, run against adamx in a process of their own
# (tests/test_optax_conformance.py): a step of CI of its own.
test-optax: setup
	ADAMX_OPTAX_WORKERS=$(PYTEST_WORKERS) $(BIN)/python -m pytest -m optax_suite \
		tests/test_optax_conformance.py

# The benchmark programs on tiny sizes and checks of what XLA compiles: CI runs
# them as a step of their own, with XLA's fusion emitters (the code users get;
# tests/conftest.py compiles the rest of the suite with its older emitters).
INTERNALS_XLA_FLAGS := --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=1
test-internals: setup
	XLA_FLAGS="$(INTERNALS_XLA_FLAGS)" $(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m internals tests

format: setup
	$(BIN)/ruff format adamx tests examples benchmarks docs
	$(BIN)/ruff check --fix adamx tests examples benchmarks docs

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache site
