# The two README commands (bench, test). Each first sets up (or reuses) the virtual env: see scripts/env.sh.
.PHONY: bench test test-triton36 test-timm build-cuda env env-triton36 env-cuda report bench-suite bench-gpu \
        engine-gpu clean

export TTF_VENV ?= .venv
PY := $(TTF_VENV)/bin/python

env:
	@scripts/env.sh >/dev/null

bench: env        ## main job: the profiler on the embedded default models (S18x2 vs S36x1, fused vs reference)
	$(PY) -m threethings_fast.profile $(ARGS)

test: env         ## the test suite (CPU; Triton kernels under the interpreter; GPU tests skip without CUDA)
	$(PY) -m pytest -q $(ARGS)

# Test files with no Triton in them (reference models, checkpoints, configs, the torch backend): run once, in
# `make test`; `make test-triton36` leaves them out.
NO_TRITON_TESTS := test_checkpoint test_checkpoint_fuzz test_configs test_convert_modules test_fused_torch \
                   test_mlp_reference test_reference test_vip_ffonly_reference
TRITON36_SKIPS := --deselect tests/test_properties.py::test_torch_backend_equals_reference \
                  $(foreach t,$(NO_TRITON_TESTS),--ignore=tests/$(t).py)

# The venvs of the targets below; `make env-triton36 env-cuda` alone prepares them (CI does it while `make test` runs).
TRITON36_ENV := TTF_VENV=.venv-triton3.6 TTF_TRITON_SPEC="triton==3.6.0" TTF_NUMPY_SPEC="numpy<2.4"
CUDA_ENV := TTF_VENV=.venv-cuda TTF_FLAVOUR=cuda

env-triton36:
	@$(TRITON36_ENV) scripts/env.sh >/dev/null

env-cuda:
	@$(CUDA_ENV) scripts/env.sh >/dev/null

test-triton36:    ## the suite again on the GPU image's Triton 3.6 (CPU: interpreter + sm_90 compile), own venv;
                  ## the C++ engine's tests, the device scripts' dry runs, the torch-backend property and the test
                  ## files without Triton (NO_TRITON_TESTS) run once, in `make test`
	$(MAKE) test $(TRITON36_ENV) ARGS='-m "not engine and not scripts" $(TRITON36_SKIPS) $(ARGS)'

test-timm: env-cuda   ## real-timm interop tests (CUDA build of torch 2.14.1 + torchvision, run on the CPU), own venv
	TTF_REQUIRE_TIMM=1 .venv-cuda/bin/python -m pytest -q tests/test_timm_interop.py tests/test_timm_mlp_interop.py $(ARGS)

build-cuda: env-cuda  ## the engine's CUDA build for sm_90a (no GPU needed) + instruction and resource checks, .venv-cuda
	rm -rf build/torch_extensions build/engine && mkdir -p build/engine
	@echo "building the engine extension (CUDA, sm_90a); log in build/engine/build.log"
	@TORCH_EXTENSIONS_DIR=$(CURDIR)/build/torch_extensions TTF_BUILD_VERBOSE=1 .venv-cuda/bin/python -c \
	  "from threethings_fast.extension import load_engine; load_engine()" > build/engine/build.log 2>&1 \
	  || (grep -B2 -A8 -i "error" build/engine/build.log | head -80; exit 1)
	TORCH_EXTENSIONS_DIR=$(CURDIR)/build/torch_extensions TTF_ENGINE_BUILD_LOG=build/engine/build.log \
	  .venv-cuda/bin/python -m pytest -q tests/test_engine_build.py $(ARGS)

report: env       ## the short reference-vs-fused report: the profiler's --preset report (two batch sizes)
	$(PY) -m threethings_fast.bench $(ARGS)

bench-suite: env  ## pytest-benchmark suites (per op and whole model), JSON under bench/results/
	$(PY) -m pytest -c bench/pytest.ini bench/ --benchmark-json=bench/results/bench.json $(ARGS)

engine-gpu:       ## the C++ engine's one prepared GPU run (sm_90; <= 6 min with the build): make engine-gpu OUT=dir
	bench/engine_gpu.sh $(or $(OUT),out/engine)

bench-gpu:        ## the Triton path's tiered GPU run (GPU image: torch, triton, timm): make bench-gpu TIER=1 OUT=dir
	bench/gpu_suite.sh $(or $(TIER),1) $(or $(OUT),out/gpu-tier$(or $(TIER),1))

clean:
	rm -rf $(TTF_VENV) .venv-triton3.6 .venv-cuda build *.egg-info .pytest_cache .benchmarks
