"""Measure what fine-tuning costs per mode: peak memory, step time, bytes stored per task.

One training step = forward, cross-entropy, backward, AdamW step, zero_grad(set_to_none=True). For each mode the
model is deep-copied, frozen by role (`freeze`) and given its own AdamW over its trainable parameters.

Peak memory (same definition on every device):
    peak = persistent + step_peak
    persistent = bytes of the weights, buffers and AdamW state (exp_avg, exp_avg_sq, step) of this mode's copy
    step_peak  = the highest amount of memory allocated during one step above what was allocated before it:
                 activations saved for backward, gradients, temporaries.
    CUDA: step_peak = torch.cuda.max_memory_allocated() - memory_allocated() before the step (peak stats reset).
    CPU:  step_peak = the running maximum of the allocation / free events torch.profiler records with
          profile_memory=True (every allocation through c10's CPU allocator, in time order). Allocations that
          bypass it (oneDNN scratch space, the BLAS library's buffers) are not counted; they do not depend on
          the fine-tuning mode.
Why modes differ: a frozen Linear needs no weight gradient, so autograd saves no input for it — attention-only
training does not keep fc1/fc2 inputs (4x wider than the residual stream in fc2's case) and allocates no FFN
gradients or AdamW state.

Step time: median (and quartiles) of `repeats` steps per mode, modes interleaved and rotated each round so a
slow period of a shared machine hits them all alike; after `warmup` steps per mode (AdamW state allocated).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from ..reference.model import VisionTransformer
from ..timing import sync
from .roles import _check_model, delta_keys, freeze, make_optimizer, summarize, train_mode


@dataclass
class CostRow:
    mode: str
    trainable_params: int
    stored_bytes: int           # what a task of this mode stores (delta tensors)
    persistent_bytes: int       # weights + buffers + optimizer state
    step_peak_bytes: Optional[int]
    step_ms: list = field(default_factory=list)

    @property
    def peak_bytes(self) -> Optional[int]:
        return None if self.step_peak_bytes is None else self.persistent_bytes + self.step_peak_bytes

    @property
    def median_ms(self) -> float:
        return statistics.median(self.step_ms)

    def quartiles_ms(self) -> tuple:
        s = sorted(self.step_ms)
        if len(s) < 4:
            return s[0], s[-1]
        q = statistics.quantiles(s, n=4)
        return q[0], q[2]


@dataclass
class CostTable:
    rows: list
    device: str
    setup: str
    memory_method: str
    command: str = ""

    def row(self, mode: str) -> CostRow:
        return next(r for r in self.rows if r.mode == mode)

    def to_dict(self) -> dict:
        return {"device": self.device, "setup": self.setup, "memory_method": self.memory_method,
                "command": self.command, "torch": str(torch.__version__),
                "rows": [dict(asdict(r), peak_bytes=r.peak_bytes, median_ms=r.median_ms) for r in self.rows]}

    def __str__(self) -> str:
        mib = 2 ** 20
        full = next((r for r in self.rows if r.mode == "full"), None)

        def rel(x, y):
            return "" if full is None or x is None or not y else f" ({100 * (x / y - 1):+.1f}%)"

        lines = []
        if self.command:
            lines.append(f"command: `{self.command}`")
        lines += [f"device: {self.device}; torch {torch.__version__}", f"setup: {self.setup}",
                  f"peak memory: {self.memory_method}", "",
                  "| mode | trainable params | stored / task (MiB) | weights + AdamW state (MiB) | step peak (MiB) "
                  "| peak memory (MiB) | step time, ms: median [p25, p75] |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lo, hi = r.quartiles_ms()
            step = "n/a" if r.step_peak_bytes is None else f"{r.step_peak_bytes / mib:.1f}"
            peak = "n/a" if r.peak_bytes is None else f"{r.peak_bytes / mib:.1f}"
            lines.append(
                f"| {r.mode} | {r.trainable_params:,} "
                f"| {r.stored_bytes / mib:.2f}{rel(r.stored_bytes, full and full.stored_bytes)} "
                f"| {r.persistent_bytes / mib:.1f} | {step} "
                f"| {peak}{rel(r.peak_bytes, full and full.peak_bytes)} "
                f"| {r.median_ms:.1f} [{lo:.1f}, {hi:.1f}]{rel(r.median_ms, full and full.median_ms)} |")
        if full is not None:
            lines.append("")
            lines.append("(percentages: relative to full fine-tuning)")
        return "\n".join(lines)


def _tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return _tensor_bytes(v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor))


def _cpu_step_peak(step) -> Optional[int]:
    """Peak bytes above the start, from the profiler's CPU allocation events (None if unavailable)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    try:  # kineto's raw events carry signed byte counts and timestamps; the aggregated view loses the order
        events = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:
        return None
    current = peak = 0
    for _, nbytes in sorted(events):
        current += nbytes
        peak = max(peak, current)
    return peak


def measure_finetune_cost(model: VisionTransformer, images: torch.Tensor, labels: Optional[torch.Tensor] = None,
                          modes=("attn", "ffn", "full"), repeats: int = 5, warmup: int = 2, lr: float = 1e-4,
                          amp: Optional[torch.dtype] = None, command: str = "") -> CostTable:
    """Peak memory, step time and stored bytes of one fine-tuning step per mode (see the module docstring).

    model:  reference model on the device to measure (not modified: each mode trains a copy).
    images: (B, C, S, S) batch in the model's dtype and device; labels: (B,) int64, random if None.
    amp:    autocast dtype (torch.bfloat16 / torch.float16) for mixed precision on CUDA, None for none.
    Returns a CostTable; str() is a markdown table."""
    _check_model(model)
    device = images.device
    if labels is None:
        g = torch.Generator().manual_seed(0)
        labels = torch.randint(0, max(1, model.config.num_classes), (images.shape[0],), generator=g).to(device)
    runs = {}
    for mode in modes:
        m = copy.deepcopy(model)
        freeze(m, mode)
        train_mode(m)
        opt = make_optimizer(m, lr=lr)

        def step(m=m, opt=opt):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(m(images).float(), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        for _ in range(warmup):
            step()
        runs[mode] = (m, opt, step)

    times = {mode: [] for mode in modes}
    for r in range(repeats):
        order = list(modes[r % len(modes):]) + list(modes[:r % len(modes)])
        for mode in order:
            sync(device)
            t0 = time.perf_counter()
            runs[mode][2]()
            sync(device)
            times[mode].append(1e3 * (time.perf_counter() - t0))

    rows = []
    for mode in modes:
        m, opt, step = runs[mode]
        persistent = _tensor_bytes(m.state_dict().values()) + _optimizer_state_bytes(opt)
        if device.type == "cuda":
            sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            sync(device)
            step_peak = torch.cuda.max_memory_allocated(device) - before
        else:
            step_peak = _cpu_step_peak(step)
        sd = m.state_dict()
        stored = _tensor_bytes(sd[k] for k in delta_keys(m, mode))
        rows.append(CostRow(mode=mode, trainable_params=summarize(m, mode).num_trainable, stored_bytes=stored,
                            persistent_bytes=persistent, step_peak_bytes=step_peak, step_ms=times[mode]))
        del runs[mode]  # free this copy before measuring the next one

    cfg = model.config
    if device.type == "cuda":
        dev = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        dev = f"CPU, {torch.get_num_threads()} threads"
    setup = (f"D={cfg.embed_dim}, depth={cfg.depth}, K={cfg.num_parallel}, heads={cfg.num_heads}, "
             f"img {cfg.img_size} (N={cfg.num_tokens}), {cfg.num_classes} classes, batch {images.shape[0]}, "
             f"{images.dtype}{'' if amp is None else f' + autocast {amp}'}, AdamW, {repeats} timed steps per mode "
             f"after {warmup} warm-up")
    method = ("torch.cuda.max_memory_allocated during one step + weights/optimizer state" if device.type == "cuda"
              else "weights + buffers + AdamW state + running peak of torch.profiler CPU allocation events in one step")
    return CostTable(rows=rows, device=dev, setup=setup, memory_method=method, command=command)
