# phyrlab: `make lab` opens the notebooks, `make test` runs every check, `make report` builds site/.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.phyrlab-installed
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval-sanitize.cfg

.PHONY: lab test unit nbval lint nbcheck report strip bench voila reliability browser clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,browser,present]'
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/phyrlab lab

test: lint unit nbcheck nbval

lint: $(STAMP)
	$(VENV)/bin/ruff check phyrlab tests benchmarks

unit: $(STAMP)
	$(PY) -m pytest tests -q -m "not browser"

nbcheck: $(STAMP)
	$(PY) -m phyrlab.nbtools check

nbval: $(STAMP)
	$(PY) -m pytest $(NBVAL) notebooks -q -p no:randomly

report: $(STAMP)
	$(VENV)/bin/phyrlab report --out site

strip: $(STAMP)
	$(PY) -m phyrlab.nbtools regen

NB ?= 01-storage-size.ipynb
voila: $(STAMP)
	$(VENV)/bin/voila notebooks/$(NB) --no-browser --Voila.ip=127.0.0.1

bench: $(STAMP)
	$(VENV)/bin/phyrlab bench

reliability: $(STAMP)
	$(PY) -m phyrlab.reliability

browser: $(STAMP)
	$(PY) -m pytest tests/browser -q -m browser

clean:
	rm -rf site test-artifacts .pytest_cache
