# medgen: the two commands a user needs are `make reproduce` and `make test`.
#   make reproduce PRESET=smoke PAPERS="spine knee"   # run notebooks -> reports/
#   make test                                         # unit tests + nbval on the notebooks
VENV ?= .venv
PYTHON ?= python3
PRESET ?= smoke
PAPERS ?=
RETRAIN ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install reproduce test demo benchmark clean

install: $(STAMP)

# torch/torchvision first and pinned, so pip takes the local wheels instead of resolving them
# again; then the package itself (editable) with its test extra.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -e ".[test]"
	touch $@

reproduce: $(STAMP)
	$(BIN)/python -m medgen reproduce --preset $(PRESET) --papers "$(PAPERS)" $(if $(filter-out 0,$(RETRAIN)),--retrain)

# pytest exit code 5 means "no tests collected": not a failure here.
test: $(STAMP)
	if [ -f scripts/install_browser.sh ]; then \
	  bash scripts/install_browser.sh || echo "make: no Chromium; the browser tests will be skipped" >&2; fi
	MEDGEN_PRESET=ci $(BIN)/pytest tests || test $$? -eq 5
	MEDGEN_PRESET=ci $(BIN)/pytest --nbval-lax --nbval-current-env notebooks/ || test $$? -eq 5

demo: $(STAMP)
	$(BIN)/python -m medgen demo

benchmark: $(STAMP)
	$(BIN)/python -m benchmark.speed
	$(BIN)/python -m benchmark.phantoms
	$(BIN)/python -m benchmark.metrics
	$(BIN)/python -m benchmark.translation
	$(BIN)/python -m benchmark.lung_us
	$(BIN)/python -m benchmark.latent

# Generated files only; the virtualenv and trained runs are kept (`rm -rf .venv runs` for those).
clean:
	rm -rf build *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -path ./$(VENV) -prune -o -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
