# The two README commands (bench, test). Each first sets up (or reuses) the virtual env: see scripts/env.sh.
.PHONY: bench test test-triton36 test-timm env report bench-suite bench-gpu clean

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

test-timm:        ## real-timm interop tests (CUDA build of torch 2.14.1 + torchvision, run on the CPU), own venv
	@TTF_VENV=.venv-cuda TTF_FLAVOUR=cuda scripts/env.sh >/dev/null
	TTF_REQUIRE_TIMM=1 .venv-cuda/bin/python -m pytest -q tests/test_timm_interop.py $(ARGS)

report: env       ## the short first-version report: reference vs fused at two batch sizes
	$(PY) -m threethings_fast.bench $(ARGS)

bench-suite: env  ## pytest-benchmark suites (per op and whole model), JSON under bench/results/
	$(PY) -m pytest -c bench/pytest.ini bench/ --benchmark-json=bench/results/bench.json $(ARGS)

bench-gpu:        ## the one-call GPU suite (a GPU machine with torch + triton): make bench-gpu OUT=dir
	bench/gpu_suite.sh $(or $(OUT),out/gpu)

clean:
	rm -rf $(TTF_VENV) .venv-triton3.6 .venv-cuda build *.egg-info .pytest_cache .benchmarks
