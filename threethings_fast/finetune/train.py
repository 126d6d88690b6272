"""A minimal training loop and the end-to-end demo behind `python -m threethings_fast.finetune demo`.

Demo (no download, < 1 min on a 2-core CPU by default):
  1. base: a tiny parallel ViT (K=2, patch 8) trained on digits 0-4 at 32x32 (or loaded with --base);
  2. new task at a new resolution: digits 5-9 at 48x48 (new 5-class head, pos-embed resized bicubically), trained
     with only the attention weights (+ head + pos-embed) of every branch;
  3. the task is saved as a delta, reloaded onto the base (outputs must be identical), and both tasks are served
     from one fused model (MultiTaskFused) with their accuracies.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from ..api import create_model
from ..checkpoint import load_state_dict
from ..configs import ViTConfig, from_name
from ..reference.model import VisionTransformer
from .adapt import adapt_resolution, replace_head
from .data import Split, load_digits_tensors, make_task
from .delta import base_fingerprint, load_delta, save_delta
from .multitask import MultiTaskFused
from .roles import freeze, make_optimizer, train_mode


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency of the demo, keep working without it
        return None
    # disable=None: tqdm turns itself off when stderr is not a terminal (logs, CI), the epoch lines remain
    return tqdm(total=total, desc=desc, leave=False, disable=None if enabled else True, dynamic_ncols=True)


def _log(bar, line: str) -> None:
    if bar is not None:
        bar.write(line)
    else:
        print(line, flush=True)


@torch.no_grad()
def evaluate(model, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of `model` (reference or anything callable on images) on `split`."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    correct = 0
    for i in range(0, len(split), batch_size):
        logits = model(split.images[i:i + batch_size])
        correct += (logits.argmax(-1) == split.labels[i:i + batch_size]).sum().item()
    return correct / max(1, len(split))


def fit(model: VisionTransformer, train: Split, val: Split, epochs: int, lr: float, batch_size: int = 64,
        weight_decay: float = 0.05, seed: int = 0, desc: str = "train", progress: bool = True,
        log: Optional[list] = None) -> float:
    """AdamW (trainable parameters only, cosine schedule) with cross-entropy; logs loss/accuracy per epoch.
    Frozen BatchNorm layers stay in eval mode (train_mode). Returns the final validation accuracy."""
    opt = make_optimizer(model, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(seed)
    bar = _progress(total, desc, progress)
    acc = float("nan")
    for epoch in range(1, epochs + 1):
        train_mode(model)
        perm = torch.randperm(len(train), generator=g)
        loss_sum, correct = 0.0, 0
        for i in range(0, len(train), batch_size):
            idx = perm[i:i + batch_size]
            x, y = train.images[idx], train.labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(-1) == y).sum().item()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
        acc = evaluate(model, val)
        record = {"phase": desc, "epoch": epoch, "loss": loss_sum / len(train), "train_acc": correct / len(train),
                  "val_acc": acc}
        if log is not None:
            log.append(record)
        _log(bar, f"{desc:>10} epoch {epoch:2d}/{epochs}  loss {record['loss']:.4f}  "
                  f"train acc {record['train_acc']:.3f}  val acc {acc:.3f}")
    if bar is not None:
        bar.close()
    return acc


def _load_base(path: str, config_name: Optional[str]) -> VisionTransformer:
    """A base saved by this demo ({"config": dict, "model": state dict}), or a timm/deit state dict with
    --base-config naming its architecture. Read with weights_only=True."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and "config" in payload and isinstance(payload.get("config"), dict):
        model = VisionTransformer(ViTConfig(**payload["config"]))
        load_state_dict(model, payload["model"])
        return model
    if config_name is None:
        raise ValueError(f"{path} is a plain state dict: pass --base-config NAME (e.g. tiny_2x2) for its "
                         f"architecture")
    model = create_model(from_name(config_name))
    load_state_dict(model, payload)
    return model


def run_demo(out_dir: str = "finetune_demo", base_path: Optional[str] = None, base_config: Optional[str] = None,
             model_name: str = "tiny_2x2", modes=("attn",), pretrain_epochs: int = 15, epochs: int = 10,
             base_size: int = 32, new_size: int = 48, lr: float = 3e-3, batch_size: int = 32, seed: int = 0,
             threads: Optional[int] = 1, progress: bool = True) -> dict:
    """The end-to-end demo (module docstring). Returns a dict of results; writes base.pt, <task>.delta.pt and
    log.jsonl under out_dir."""
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_demo(out_dir, base_path, base_config, model_name, modes, pretrain_epochs, epochs, base_size,
                         new_size, lr, batch_size, seed, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(out_dir, base_path, base_config, model_name, modes, pretrain_epochs, epochs, base_size, new_size, lr,
              batch_size, seed, progress) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log: list = []
    images8, labels = load_digits_tensors()
    task_a = make_task(images8, labels, range(0, 5), base_size, seed=seed)
    task_b = make_task(images8, labels, range(5, 10), new_size, seed=seed)
    print(f"digits (scikit-learn, no download): task A = digits 0-4 at {base_size}px "
          f"({len(task_a[0])} train / {len(task_a[1])} val); task B = digits 5-9 at {new_size}px "
          f"({len(task_b[0])} train / {len(task_b[1])} val)", flush=True)

    # 1. base model
    if base_path:
        base = _load_base(base_path, base_config)
        if base.config.img_size != base_size:
            adapt_resolution(base, base_size)
        print(f"base: loaded {base_path}", flush=True)
    else:
        # LayerScale starts at 0.1, not the paper's 1e-5: a few hundred steps must suffice here.
        base = create_model(model_name, img_size=base_size, patch_size=8, num_classes=5, init_values=0.1)
        print(f"base: {model_name} (D={base.config.embed_dim}, depth {base.config.depth}, "
              f"K={base.config.num_parallel}, patch 8, N={base.config.num_tokens}); pretraining all weights on task A",
              flush=True)
        freeze(base, "full")
        fit(base, *task_a, epochs=pretrain_epochs, lr=lr, batch_size=batch_size, seed=seed, desc="pretrain",
            progress=progress, log=log)
        torch.save({"config": dataclasses.asdict(base.config), "model": base.state_dict()}, out / "base.pt")
    base.eval().requires_grad_(False)
    acc_base = evaluate(base, task_a[1])
    print(f"base accuracy on task A: {acc_base:.3f}", flush=True)

    # 2. fine-tune on task B at the new resolution, one run per mode
    results = {"base_acc_A": acc_base, "modes": {}}
    deltas = {}
    for mode in modes:
        model = copy.deepcopy(base)
        replace_head(model, 5, generator=torch.Generator().manual_seed(seed))
        adapt_resolution(model, new_size)                     # pos_embed bicubic 4x4 -> 6x6 grid
        fingerprint = base_fingerprint(base, mode)            # of the frozen tensors, before training
        summary = freeze(model, mode)
        print(summary, flush=True)
        acc = fit(model, *task_b, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, desc=f"ft-{mode}",
                  progress=progress, log=log)
        stats = save_delta(model, out / f"taskB_{mode}.delta.pt", base_fingerprint=fingerprint)
        print(stats, flush=True)
        # the delta alone, applied onto the base, must give the fine-tuned model back exactly
        reloaded = load_delta(base, stats.path).eval()
        model.eval()
        with torch.no_grad():
            x = task_b[1].images[:64]
            exact = torch.equal(reloaded(x), model(x))
        results["modes"][mode] = {"val_acc_B": acc, "delta_path": stats.path, "delta_bytes": stats.delta_bytes,
                                  "model_bytes": stats.model_bytes, "ratio": stats.ratio,
                                  "trainable": summary.num_trainable, "total": summary.num_total,
                                  "reload_exact": exact}
        label = mode if mode == "full" else mode + "-only"
        print(f"task B ({label} fine-tuning) val accuracy {acc:.3f}; delta reloaded onto the base "
              f"reproduces the model exactly: {exact}", flush=True)
        if mode in ("attn", "ffn"):
            deltas[mode] = stats.path

    # 3. one fused model serving both tasks: A (the base itself, as an attn delta) and B
    if deltas:
        mode = "attn" if "attn" in deltas else next(iter(deltas))
        base_task = copy.deepcopy(base)
        freeze(base_task, mode)
        path_a = save_delta(base_task, out / f"taskA_base_{mode}.delta.pt").path
        served = MultiTaskFused(base, backend="torch")
        served.add_task("A", path_a)
        served.add_task("B", deltas[mode])
        acc_fa = evaluate(lambda x: served(x, task="A"), task_a[1])
        acc_fb = evaluate(lambda x: served(x, task="B"), task_b[1])
        acc_fa2 = evaluate(lambda x: served(x, task="A"), task_a[1])
        results["fused"] = {"acc_A": acc_fa, "acc_B": acc_fb, "acc_A_again": acc_fa2}
        print(f"fused (torch backend), one base + 2 deltas: task A acc {acc_fa:.3f}, task B acc {acc_fb:.3f}, "
              f"A again {acc_fa2:.3f}", flush=True)

    results["seconds"] = time.perf_counter() - t_start
    with open(out / "log.jsonl", "w") as f:
        for record in log:
            f.write(json.dumps(record) + "\n")
        f.write(json.dumps({"phase": "summary", **results}) + "\n")
    print(f"done in {results['seconds']:.1f} s; outputs in {out}/", flush=True)
    return results
