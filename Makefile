# Two set-up commands on a fresh machine:
#   make demo  -- create .venv, install hierfit with every engine, run `hierfit demo`
#   make test  -- create/update .venv, run the whole test suite
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[all,test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hierfit demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
