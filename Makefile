# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TEST_WORKERS ?= 4
export LAUNCH_HOME ?= $(CURDIR)/.launch

.PHONY: run test setup setup-test setup-ray lint bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(VENV)/bin/pip install -q -r requirements-test.txt
	touch $@

setup: $(VENV)/.installed

setup-test: $(VENV)/.installed-test

# Optional: Ray for LAUNCH_RUNTIME=ray and its tests (which skip without it). About 240 MB.
$(VENV)/.installed-ray: $(VENV)/.installed requirements-ray.txt
	$(VENV)/bin/pip install -q -r requirements-ray.txt
	touch $@

setup-ray: $(VENV)/.installed-ray

run: setup
	$(PY) manage.py launch up

# Tests get a LAUNCH_HOME of their own so they never touch the data of `make run`.
test: setup-test
	LAUNCH_HOME=$(CURDIR)/.launch-test $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: setup-test
	$(VENV)/bin/ruff check .

# Side by side with BentoML and Ray Serve (installed once under .bench-venvs/), then the async,
# cold start, batch and other target figures in the same run; both write their block of BENCHMARKS.md.
bench: setup
	$(PY) bench/peers.py --reps 3
	$(PY) bench/figures.py

clean:
	rm -rf $(VENV) .launch-test
