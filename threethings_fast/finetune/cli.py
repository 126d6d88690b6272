"""`python -m threethings_fast.finetune <command>`:

    demo     end-to-end attention-only fine-tuning on scikit-learn's digits (no download, ~30 s on a 2-core CPU)
    cost     peak memory / step time / stored bytes of attn vs ffn vs full fine-tuning (the paper's claims)
    storage  analytic bytes stored per extra task (e.g. ViT-B: attn ~ 1/3)
    summary  which parameters each mode trains, by role
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Optional

import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
_AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _modes(text: str) -> tuple:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in modes if m not in ("attn", "ffn", "full")]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes must be a comma list of attn, ffn, full; got {text!r}")
    return modes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m threethings_fast.finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="pretrain a tiny base on digits 0-4 @32px, fine-tune attention-only on "
                                    "digits 5-9 @48px, save the delta, serve both tasks fused")
    d.add_argument("--out", default="finetune_demo", help="output folder (base.pt, *.delta.pt, log.jsonl)")
    d.add_argument("--base", default=None, help="skip pretraining: a base.pt written by a previous demo, or a "
                                                "timm/deit state dict (then --base-config names its architecture)")
    d.add_argument("--base-config", default=None, help="model name of a plain --base state dict")
    d.add_argument("--model", default="tiny_2x2", help="architecture of the base to pretrain (patch 8 is forced)")
    d.add_argument("--modes", type=_modes, default=("attn",), help="comma list: attn,ffn,full (default attn)")
    d.add_argument("--pretrain-epochs", type=int, default=15)
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--base-size", type=int, default=32)
    d.add_argument("--new-size", type=int, default=48)
    d.add_argument("--lr", type=float, default=3e-3)
    d.add_argument("--batch-size", type=int, default=32)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model)")
    d.add_argument("--smoke", action="store_true", help="1 epoch each: checks the pipeline in a few seconds")
    d.add_argument("--no-progress", action="store_true", help="no tqdm bars (epoch log lines only)")

    c = sub.add_parser("cost", help="measure peak memory, step time and stored bytes per fine-tuning mode")
    c.add_argument("--model", default="S4x1", help="model name (paper short names work: S4x1, B12x1, S18x2)")
    c.add_argument("--img-size", type=int, default=224)
    c.add_argument("--num-classes", type=int, default=1000)
    c.add_argument("--batch", type=int, default=8)
    c.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    c.add_argument("--dtype", choices=sorted(_DTYPES), default="float32", help="weight dtype")
    c.add_argument("--amp", choices=sorted(_AMP), default="none", help="autocast dtype (CUDA mixed precision)")
    c.add_argument("--modes", type=_modes, default=("attn", "ffn", "full"))
    c.add_argument("--repeats", type=int, default=5)
    c.add_argument("--warmup", type=int, default=2)
    c.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    c.add_argument("--vit-b-384", action="store_true",
                   help="the paper's setting on GPU: B12x1 at 384 (N=577), batch 32, CUDA, bf16 autocast, 10 repeats")
    c.add_argument("--json", default=None, help="also write the raw results as JSON here")

    s = sub.add_parser("storage", help="analytic bytes stored per extra task, by mode")
    s.add_argument("--model", default="B12x1")
    s.add_argument("--img-size", type=int, default=None)
    s.add_argument("--num-classes", type=int, default=None)
    s.add_argument("--dtype", choices=sorted(_DTYPES), default="float32")

    m = sub.add_parser("summary", help="trainable parameters by role for a mode")
    m.add_argument("--model", default="S18x2")
    m.add_argument("--train", choices=("attn", "ffn", "full"), default="attn")
    return p


def _overrides(args) -> dict:
    return {k: v for k, v in (("img_size", getattr(args, "img_size", None)),
                              ("num_classes", getattr(args, "num_classes", None))) if v is not None}


def _cmd_demo(args) -> int:
    from .train import run_demo
    epochs = (1, 1) if args.smoke else (args.pretrain_epochs, args.epochs)
    run_demo(out_dir=args.out, base_path=args.base, base_config=args.base_config, model_name=args.model,
             modes=args.modes, pretrain_epochs=epochs[0], epochs=epochs[1], base_size=args.base_size,
             new_size=args.new_size, lr=args.lr, batch_size=args.batch_size, seed=args.seed, threads=args.threads,
             progress=not args.no_progress)
    return 0


def _cmd_cost(args, argv) -> int:
    from ..api import create_model
    from .cost import measure_finetune_cost
    if args.vit_b_384:  # the preset replaces these flags
        args.model, args.img_size, args.batch, args.device = "B12x1", 384, 32, "cuda"
        args.amp, args.repeats = "bf16", 10
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: CUDA is not available here (the --vit-b-384 setting needs a GPU); use --device cpu with a "
              "small model, e.g. --model S4x1 --batch 8", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = _DTYPES[args.dtype]
    model = create_model(args.model, **_overrides(args)).to(device=device, dtype=dtype)
    cfg = model.config
    images = torch.randn(args.batch, cfg.in_chans, cfg.img_size, cfg.img_size, device=device, dtype=dtype)
    command = "python -m threethings_fast.finetune " + " ".join(shlex.quote(a) for a in argv)
    table = measure_finetune_cost(model, images, modes=args.modes, repeats=args.repeats, warmup=args.warmup,
                                  amp=_AMP[args.amp], command=command)
    print(f"model {args.model}")
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, **table.to_dict()}, f, indent=1)
    return 0


def _cmd_storage(args) -> int:
    from ..configs import from_name
    from .delta import storage_report
    print(storage_report(from_name(args.model, **_overrides(args)), dtype=_DTYPES[args.dtype]))
    return 0


def _cmd_summary(args) -> int:
    from ..configs import from_name
    from ..reference.model import VisionTransformer
    from .roles import summarize
    with torch.device("meta"):  # counts only
        model = VisionTransformer(from_name(args.model))
    print(summarize(model, args.train))
    return 0


def main(argv: Optional[list] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "demo":
        return _cmd_demo(args)
    if args.command == "cost":
        return _cmd_cost(args, argv)
    if args.command == "storage":
        return _cmd_storage(args)
    return _cmd_summary(args)
