# The two commands the README opens with:
#   make run   - set everything up and run the portal with the built-in HaloPSA sandbox
#   make test  - set everything up and run the whole test suite (SQLite, then PostgreSQL + Redis)
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test lint venv deps dev-deps browser services-up services-down test-sqlite test-postgres clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required ($(PYTHON) not found)."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.deps: requirements.txt | $(PY)
	$(PIP) install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(PY)
	$(PIP) install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.deps

deps: $(VENV)/.deps
dev-deps: $(VENV)/.dev-deps

browser:
	@scripts/ensure_chromium.sh

run: deps
	@scripts/run.sh

test: dev-deps browser
	@scripts/test.sh

lint: dev-deps
	@scripts/lint.sh

clean:
	rm -rf $(VENV) staticfiles var/test-media test-artifacts
