"""Test-wide setup. Triton kernels run under the interpreter when there is no GPU: the variable must be set before
the first `import triton` anywhere in the process, which is why it lives here."""
from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _interpreter_numpy_clash() -> str | None:
    """Triton <= 3.6's interpreter turns scalar kernel arguments into 1-element arrays and calls int() on them,
    which NumPy >= 2.4 refuses: every kernel with a runtime loop bound then fails with "only 0-dimensional arrays
    can be converted to Python scalars". Name the cause instead of letting dozens of kernels fail with it."""
    if HAS_CUDA or os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        import numpy
        import triton
    except ImportError:
        return None

    def major_minor(v: str) -> tuple[int, int]:
        parts = (v.split("+")[0].split(".") + ["0"])[:2]
        return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)

    if major_minor(triton.__version__) <= (3, 6) and major_minor(numpy.__version__) >= (2, 4):
        return (f"triton {triton.__version__}'s interpreter does not work with numpy {numpy.__version__} "
                "(int() of a 1-element array); install 'numpy<2.4' or triton >= 3.7 to run the kernels on the CPU")
    return None


def pytest_configure(config):
    clash = _interpreter_numpy_clash()
    if clash:
        raise pytest.UsageError(clash)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_terminal_summary(terminalreporter):
    from helpers import FUZZ_TABLE, PROPERTY_COUNTS
    if FUZZ_TABLE:
        terminalreporter.section("checkpoint fuzzing: corruption -> outcome")
        for source, what, outcome in FUZZ_TABLE:
            terminalreporter.write_line(f"{source:16s} {what:34s} {outcome}")
    if PROPERTY_COUNTS:
        terminalreporter.section("property-based tests: examples run")
        for name, n in sorted(PROPERTY_COUNTS.items()):
            terminalreporter.write_line(f"{n:5d}  {name}")
