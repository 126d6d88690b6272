# The two README commands (bench, test). Each first sets up (or reuses) the virtual env: see scripts/env.sh.
.PHONY: bench test test-triton36 env report bench-suite bench-gpu clean

export TTF_VENV ?= .venv
PY := $(TTF_VENV)/bin/python

env:
	@scripts/env.sh >/dev/null

bench: env        ## main job: the profiler on the embedded default models (S18x2 vs S36x1, fused vs reference)
	$(PY) -m threethings_fast.profile $(ARGS)

test: env         ## the test suite (CPU; Triton kernels under the interpreter; GPU tests skip without CUDA)
	$(PY) -m pytest -q $(ARGS)

test-triton36:    ## the suite again on the GPU image's Triton 3.6 (CPU: interpreter + sm_90 compile), own venv
	$(MAKE) test TTF_VENV=.venv-triton3.6 TTF_TRITON_SPEC="triton==3.6.0" TTF_NUMPY_SPEC="numpy<2.4"

report: env       ## the short first-version report: reference vs fused at two batch sizes
	$(PY) -m threethings_fast.bench $(ARGS)

bench-suite: env  ## pytest-benchmark suites (per op and whole model), JSON under bench/results/
	$(PY) -m pytest -c bench/pytest.ini bench/ --benchmark-json=bench/results/bench.json $(ARGS)

bench-gpu:        ## the one-call GPU suite (a GPU machine with torch + triton): make bench-gpu OUT=dir
	bench/gpu_suite.sh $(or $(OUT),out/gpu)

clean:
	rm -rf $(TTF_VENV) .venv-triton3.6 build *.egg-info .pytest_cache .benchmarks
