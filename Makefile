# Everything a fresh machine needs: `make test` and `make demo` create .venv and install into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The CPU build of torch lies on this machine's disk; pinning it keeps pip from pulling a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv test demo pretrain presets bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,tensorboard]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(PY) -m pytest -q tests

presets: venv
	$(PY) tools/make_presets.py

clean:
	rm -rf outputs/demo outputs/bench
