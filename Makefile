# Every target bootstraps .venv when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
N ?= 3
DEMO_ARGS ?=

# Debian packages the tests use: a broker, speech for the keyword example, a browser for the
# dashboard, Prometheus for the Grafana queries, NATS and RabbitMQ (its MQTT plugin) as other
# MQTT engines; debootstrap, qemu-user-static (with binfmt-support), systemd-nspawn, podman,
# runc and catatonit (the pause container of `podman kube play`) for the platform checks in
# tests/platform (docs/platforms.md). Installed only when missing (CI runs as root on Debian).
DEBIAN_PACKAGES := mosquitto:mosquitto espeak-ng:espeak-ng chromium:chromium prometheus:prometheus \
  nats-server:nats-server debootstrap:debootstrap qemu-aarch64-static:qemu-user-static \
  update-binfmts:binfmt-support systemd-nspawn:systemd-container podman:podman runc:runc \
  catatonit:catatonit rabbitmq-server:rabbitmq-server

.PHONY: help venv sysdeps lint test test-repeat demo bench clean

help:
	@echo "make demo   the whole loop: train, convert, serve, watch; shifted digits raise a drift alert"
	@echo "make test   lint (ruff, mypy, import-linter) and run the whole test suite"
	@echo "make test-repeat N=3   the test suite N times: which tests failed in which run (flakes)"
	@echo "make bench  run the benchmarks in bench/ (writes bench/results/*.json)"

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	# Silero VAD's ONNX model without torch (the package's only runtime need here is the file).
	$(BIN)/python -m pip install --quiet --no-deps 'silero-vad>=5'
	@touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@missing=""; for pair in $(DEBIAN_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# arm64 binaries through qemu (tests/platform/test_aarch64.py): binfmt_misc mounted and the
	@# interpreter enabled, where this runs as root and a host without systemd left it off.
	@if [ "$$(id -u)" = 0 ] && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then \
	  mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true; \
	  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint sysdeps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-repeat: lint sysdeps
	$(BIN)/python .ci/test_repeat.py --runs $(N) -- $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/edgedl demo $(DEMO_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/convert.py

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache .test-repeat
