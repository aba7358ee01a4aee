# Each target installs into .venv first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# make demo DEMO=smoke (a few minutes) | default | long
DEMO ?= default

.PHONY: demo test test-slow bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m parti_jax.demo --preset=$(DEMO)

test: $(STAMP)
	$(PY) -m pytest -q

# pytest exits 5 when no test is marked slow.
test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow || test $$? -eq 5

bench: $(STAMP)
	$(PY) -m parti_jax.bench train --preset=bench-s
	$(PY) -m parti_jax.bench decode --preset=bench-s

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
