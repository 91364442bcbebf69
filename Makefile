# openlines - the two commands a new user needs:
#   make dev    run the whole system locally (NATS + every service), print the URLs
#   make test   lint, type-check and run the whole test suite
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip and setuptools repeat the same harmless notices for every editable package
QUIET_PIP := { grep -vE 'WARNING: Location|BuildBackendWarning|^ *!!|\*{20}|careful with folders|name as your package|with strategy, WheelFile|^ *$$' || true; }
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVICES := $(sort $(dir $(wildcard services/*/pyproject.toml)))
STAMP := $(VENV)/.installed

.PHONY: dev test lint typecheck pytest install lock clean chaos bench images

$(STAMP): constraints.txt requirements-dev.txt shared/pyproject.toml $(wildcard services/*/pyproject.toml)
	@echo "== creating $(VENV) and installing openlines, its services and tools (pinned by constraints.txt)"
	@echo "   the first time this downloads about 80 packages and takes a few minutes; each is listed as it comes"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip 2>&1 | $(QUIET_PIP)
	$(BIN)/python -m pip install --progress-bar off -c constraints.txt -r requirements-dev.txt -e shared $(addprefix -e ,$(SERVICES)) 2>&1 \
	  | $(QUIET_PIP) | { grep --line-buffered -E '^(Collecting|Successfully|ERROR|error)|^ *(Building|Installing)' || true; }
	@touch $@

install: $(STAMP)

dev: $(STAMP)
	$(BIN)/python deploy/dev.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy shared/openlines $(foreach s,$(SERVICES),$(s)$(subst -,_,$(notdir $(s:%/=%))))

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

# The fault suite at full size: 20,000 clients over every channel while every process is killed.
chaos: $(STAMP)
	OPENLINES_CHAOS_CLIENTS=20000 OPENLINES_CHAOS_REPORT_DIR=tests/reliability/reports OPENLINES_BURST_CLIENTS=1000 OPENLINES_FUZZ_EXAMPLES=10000 OPENLINES_OVERLOAD_MESSAGES=5000 $(BIN)/pytest -s -m slow tests/reliability
	OPENLINES_FUZZ_EXAMPLES=10000 $(BIN)/pytest -k fuzz tests/integration/telegram/test_telegram_fuzz.py tests/integration/vk/test_vk_callback.py

# Benchmarks against their bare ceilings; writes bench/results/*.json and bench/RESULTS.md.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# The container images from deploy/Dockerfile: nats + one per service (podman; a local Debian base
# image first when registries are unreachable - see docs/operations.md).
images:
	bash deploy/images.sh

# Re-pin every third-party package to what is installed now.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt
	@echo "constraints.txt updated"

clean:
	rm -rf $(VENV) .data .pytest_cache .mypy_cache .ruff_cache test-artifacts
