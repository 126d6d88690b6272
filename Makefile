# The two README commands. Each first sets up (or reuses) the virtual env: see scripts/env.sh.
.PHONY: bench test env clean

export TTF_VENV ?= .venv
PY := $(TTF_VENV)/bin/python

env:
	@scripts/env.sh >/dev/null

bench: env  ## main job: the benchmark report on the embedded default model
	$(PY) -m threethings_fast.bench $(ARGS)

test: env   ## the test suite (CPU; Triton kernels under the interpreter; GPU tests skip without CUDA)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf $(TTF_VENV) build *.egg-info .pytest_cache .benchmarks
