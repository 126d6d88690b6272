# The two README commands. Each sets up (or reuses) the virtual env first: see scripts/env.sh.
.PHONY: bench test test-gpu clean

PY = $(shell scripts/env.sh)

bench:  ## main job: the benchmark report on the embedded default model
	$(PY) -m threethings_fast.bench $(ARGS)

test:   ## the test suite (CPU; Triton kernels under the interpreter; GPU tests skip without CUDA)
	$(PY) -m pytest -q $(ARGS)

clean:
	rm -rf .venv build *.egg-info .pytest_cache .benchmarks
