# `make run` and `make test` work on a fresh machine: they create or refresh .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
# The CPU build; override for CUDA, e.g. make TORCH_SPEC='torch==2.13.0' PIP_EXTRA='--index-url ...'
TORCH_SPEC ?= torch==2.13.0
STAMP   = $(VENV)/.installed

.PHONY: run test bench package clean

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_SPEC)'
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m app --demo

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q -n 2 --dist loadgroup

bench: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) -m tests.bench

package: $(STAMP)
	$(MAKE) -C packaging bundle PY=$(abspath $(PY))

clean:
	rm -rf $(VENV) build dist *.egg-info bench-results.json
