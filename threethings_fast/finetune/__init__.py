"""Attention-only fine-tuning (the paper's second thing): train only the MHSA weights (+ head + pos-embed) of
every branch, store a task as a ~1/3-size delta, serve many tasks from one fused model.

    import threethings_fast as ttf
    from threethings_fast import finetune as ft
    model = ttf.create_model("S18x2")                 # the base, trained
    fp = ft.base_fingerprint(model, "attn")           # before fine-tuning
    ft.adapt_resolution(model, 384)                   # optional: new resolution (N = 577)
    ft.replace_head(model, 37)                        # optional: new label set
    print(ft.freeze(model, "attn"))                   # qkv + proj of every branch, head, pos_embed
    opt = ft.make_optimizer(model, lr=1e-4); ft.train_mode(model); ...train...
    ft.save_delta(model, "task.delta.pt", base_fingerprint=fp)
    tuned = ft.load_delta(base, "task.delta.pt")      # a copy of base with the task applied
    mt = ft.MultiTaskFused(base); mt.add_task("t", "task.delta.pt"); logits = mt(images, task="t")

CLI: python -m threethings_fast.finetune {demo,cost,storage,summary} --help
"""
from .adapt import adapt_resolution, replace_head
from .cost import CostTable, measure_finetune_cost
from .delta import (Delta, DeltaError, DeltaStats, apply_delta, base_fingerprint, check_delta, load_delta,
                    read_delta, save_delta, storage_report)
from .multitask import MultiTaskFused
from .roles import (ROLES, TRAIN_MODES, FreezeSummary, delta_keys, freeze, frozen_keys, make_optimizer, param_roles,
                    summarize, train_mode, trainable_names)

__all__ = ["freeze", "summarize", "FreezeSummary", "param_roles", "trainable_names", "delta_keys", "frozen_keys",
           "train_mode", "make_optimizer", "ROLES", "TRAIN_MODES",
           "adapt_resolution", "replace_head",
           "base_fingerprint", "save_delta", "load_delta", "read_delta", "check_delta", "apply_delta", "Delta",
           "DeltaStats", "DeltaError", "storage_report",
           "MultiTaskFused", "measure_finetune_cost", "CostTable"]
