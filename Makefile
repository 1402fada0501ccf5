# The two commands: `make run` (the demo) and `make test`. Both create .venv, install the
# project and the Debian packages it starts (mosquitto, influxd, victoria-metrics) when
# missing. The packages' system services are never used: ballpass starts its own.

VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed-stamp
DEB_PACKAGES := mosquitto mosquitto-clients influxdb victoria-metrics \
                prometheus-alertmanager prometheus chromium chromium-driver openssl
SUDO        := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test bench lint deps install clean help

help:
	@echo "make run    the demo plant (Ctrl-C stops it)"
	@echo "make test   the whole test suite (real mosquitto and influxd)"
	@echo "make bench  speed figures with their baselines (bench.json, see BENCHMARKS.md)"
	@echo "make lint   ruff and mypy"

run: install deps
	$(PY) -m ballpass demo

test: install deps
	$(PY) -m ruff check .
	$(PY) -m ballpass.devtools.typecheck  # mypy (see that module)
	$(PY) -m pytest -q -n 2 --dist loadgroup

bench: install deps
	$(PY) -m ballpass bench --json bench.json
	@cat bench.json

lint: install
	$(PY) -m ruff check .
	$(PY) -m ballpass.devtools.typecheck

install: $(STAMP)

# Debian's python3 makes a venv only with python3-venv (ensurepip), not installed by default.
$(STAMP): pyproject.toml
	@python3 -c "import ensurepip" 2>/dev/null || { \
	  echo "installing Debian package: python3-venv"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends python3-venv; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Installs only what is missing; `apt-get update` only when something is.
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
