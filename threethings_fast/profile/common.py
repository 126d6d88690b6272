"""What the profiler's sweep, trace and command line share: the run's settings and file-name slugs. Kept apart
from sweep.py so the trace needs nothing of the sweep (and the sweep may import the trace)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class Settings:
    models: list
    batches: list
    providers: list                                # registered provider names (threethings_fast.providers)
    device: str
    dtype: torch.dtype
    warmup: int
    reps: int
    min_seconds: float = 0.0
    time_budget_s: Optional[float] = None
    threads: Optional[int] = None
    preset: str = "custom"
    seed: int = 0
    measure_peak: bool = True
    progress: bool = True
    trace: Optional[str] = None                    # "MODEL:PROVIDER:BATCH", "auto" or None
    trace_dir: Optional[str] = None
    notes: list = field(default_factory=list)      # lines for the report's header (e.g. models a preset left out)


def slug(text: str) -> str:
    """`text` as a file-name part: letters, digits, '-', '_' and '.' kept, anything else '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")
