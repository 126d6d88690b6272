"""The ViT family (the paper's models and the ViTs `convert` reads from timm / deit).

Its config (`threethings_fast.configs.ViTConfig`) and reference model (`threethings_fast.reference`) keep their
historical homes; the exact folding (`folding.py`) and the fused forward over the ops protocol (`forward.py`) live
here, beside the other families' in `threethings_fast/models/<family>/`.
"""
