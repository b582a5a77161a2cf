# Two commands on a fresh machine: `make demo` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
PIP    := $(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt

.PHONY: demo test test-fast lint lab browser clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) -e '.[dev]'
	touch $(STAMP)

## demo: collect the bundled toy model over Shapes, print what it found, export the explorer,
## then (in a terminal, unless NO_LAB=1 or CI is set) open the quickstart notebook in JupyterLab
demo: $(STAMP)
	$(PY) -m neuronwidgets demo --out runs/demo
	@if [ -t 0 ] && [ -t 1 ] && [ -z "$(NO_LAB)" ] && [ -z "$$CI" ]; then \
	  $(VENV)/bin/jupyter lab notebooks/01_quickstart.ipynb; fi

## lab: open the quickstart notebook in JupyterLab
lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/01_quickstart.ipynb

## browser: Debian's Chromium for the widget tests (skipped where apt is absent)
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) \
	  || echo "WARNING: could not install chromium; browser tests will be skipped"; \
	else echo "WARNING: no apt-get: browser tests will be skipped"; fi

## lint: ruff over the package, the tests and the benchmarks (rules in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check neuronwidgets tests benchmarks

## test: lint, then the whole suite, slow tests included
test: $(STAMP) browser
	$(VENV)/bin/ruff check neuronwidgets tests benchmarks
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

clean:
	rm -rf $(VENV) runs .pytest_cache
