"""Attention-only fine-tuning: role-based freezing for every branch, task deltas, fused multi-task serving, the CLI.

Models are tiny (D=64, depth 2, 32 px) and randomized (helpers.randomize: LayerScale ~0.3, non-trivial norms), so
a wrong or missing attention weight changes the outputs far beyond the tolerances.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import threethings_fast as ttf
from threethings_fast import finetune as ft
from threethings_fast.finetune import DeltaError
from helpers import assert_within_bound, images_for, make_model, rel_err

KS = [1, 2, 3]


def _base(k, dtype=torch.float32, **overrides):
    return make_model(f"tiny_2x{k}", dtype=dtype, **overrides)


def _attention_names(model):
    """Expected trainable set for train="attn", written out from the structure (independently of roles.py)."""
    cfg = model.config
    names = {"pos_embed", "head.weight", "head.bias"}
    for i in range(cfg.depth):
        for j in range(cfg.num_parallel):
            for lin in ("qkv", "proj"):
                for t in ("weight", "bias"):
                    names.add(f"blocks.{i}.attns.{j}.attn.{lin}.{t}")
    return names


@torch.no_grad()
def _perturb_trainable(model, scale=0.05, seed=1):
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))


def _finetune(base, train="attn", img_size=None, num_classes=None, seed=1, steps=2):
    """A fine-tuned copy of base: optional new resolution / head, a few AdamW steps, then a clear perturbation of
    the trainable tensors (so tasks differ markedly). Returns (model, base fingerprint)."""
    fp = ft.base_fingerprint(base, train)
    model = copy.deepcopy(base)
    if num_classes is not None:
        ft.replace_head(model, num_classes, generator=torch.Generator().manual_seed(seed))
    if img_size is not None:
        ft.adapt_resolution(model, img_size)
    ft.freeze(model, train)
    ft.train_mode(model)
    opt = ft.make_optimizer(model, lr=1e-2, weight_decay=0.1)
    x = images_for(model, batch=3, dtype=model.cls_token.dtype)
    y = torch.arange(3) % max(1, model.config.num_classes)
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    _perturb_trainable(model, seed=seed)
    return model.eval(), fp


# -- freezing by role ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KS)
def test_attn_mode_grads_exactly_on_every_branch(k):
    model = _base(k)
    summary = ft.freeze(model, "attn")
    ft.train_mode(model)
    model(images_for(model, dtype=torch.float32)).square().sum().backward()
    expected = _attention_names(model)
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == expected
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in expected)
    # the last branch (deit's attn1 / attn2) is trained: the '.attn.' name match of the official code misses it
    assert any(f"attns.{k - 1}.attn.qkv.weight" in n for n in with_grad)
    d = model.config.embed_dim
    assert summary.trainable["attn"] == model.config.depth * k * (3 * d * d + 3 * d + d * d + d)
    assert summary.trainable["ffn"] == summary.trainable["norm"] == summary.trainable["layerscale"] == 0
    assert "attn" in str(summary) and "layerscale" in str(summary)


def test_official_name_match_misses_the_second_branch():
    """Documents the bug this module avoids: on deit-layout names, '.attn.' does not select attn1."""
    model = _base(2)
    deit_keys = ttf.export_state_dict(model, layout="deit")
    by_name = {k for k in deit_keys if ".attn." in k}
    assert not any(".attn1." in k for k in by_name) and any(".attn1." in k for k in deit_keys)
    by_role = [n for n in ft.trainable_names(model, "attn") if ".attn." in n]
    assert len(by_role) == 2 * len([k for k in by_name])  # both branches


def test_ffn_and_full_modes():
    model = _base(2)
    ft.freeze(model, "ffn")
    model(images_for(model, dtype=torch.float32)).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n in dict(model.named_parameters())
                         if ".mlp.fc" in n or n in ("pos_embed", "head.weight", "head.bias")}
    assert ft.freeze(model, "full").fraction == 1.0
    with pytest.raises(ValueError, match="train must be one of"):
        ft.freeze(model, "mlp")


@pytest.mark.parametrize("k,stem", [(1, "linear"), (2, "linear"), (3, "linear"), (2, "hmlp_bn")])
def test_frozen_tensors_bit_identical_after_adamw(k, stem):
    model = _base(k, stem=stem)
    ft.freeze(model, "attn")
    ft.train_mode(model)  # a frozen BatchNorm stem must keep its running statistics
    before = {n: t.clone() for n, t in model.state_dict().items()}
    # AdamW over ALL parameters with weight decay: frozen ones have no grad, so AdamW (decay included) skips them
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    F.cross_entropy(model(images_for(model, batch=3, dtype=torch.float32)), torch.tensor([0, 1, 2])).backward()
    opt.step()
    trained = set(ft.trainable_names(model, "attn"))
    for name, t in model.state_dict().items():
        if name in trained:
            assert not torch.equal(t, before[name]), f"{name} did not train"
        else:
            assert torch.equal(t, before[name]), f"frozen {name} changed"


# -- deltas ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KS)
def test_delta_round_trip_is_exact(k, tmp_path):
    base = _base(k)
    tuned, fp = _finetune(base, img_size=48, num_classes=7)
    stats = ft.save_delta(tuned, tmp_path / "t.pt", base_fingerprint=fp)
    assert 0 < stats.ratio < 0.5
    fresh = _base(k)  # a new object holding the same base weights
    fresh.load_state_dict(base.state_dict())
    loaded = ft.load_delta(fresh, tmp_path / "t.pt")
    assert fresh.config.img_size == 32 and fresh.config.num_classes == 10  # default: applied onto a copy
    x = images_for(tuned, batch=3, dtype=torch.float32)
    assert loaded.config == tuned.config
    assert torch.equal(loaded(x), tuned(x))
    assert ft.base_fingerprint(fresh) == fp  # stable across objects / load_state_dict
    # a float32 delta applies onto the exact float64 copy of its base (fingerprint over canonical values)
    loaded64 = ft.load_delta(copy.deepcopy(base).double(), tmp_path / "t.pt")
    assert rel_err(loaded64(x.double()), tuned(x)) < 1e-5


def test_wrong_base_or_architecture_raises(tmp_path):
    base = _base(2)
    tuned, fp = _finetune(base)
    ft.save_delta(tuned, tmp_path / "t.pt", base_fingerprint=fp)
    other = _base(2)  # same architecture, other weights
    with pytest.raises(DeltaError, match="wrong base"):
        ft.load_delta(other, tmp_path / "t.pt")
    nudged = copy.deepcopy(base)
    with torch.no_grad():
        nudged.blocks[1].ffns[1].mlp.fc2.bias[3] += 1e-6  # one frozen value
    with pytest.raises(DeltaError, match="wrong base"):
        ft.load_delta(nudged, tmp_path / "t.pt")
    with pytest.raises(DeltaError, match="different architecture"):
        ft.load_delta(_base(3), tmp_path / "t.pt")
    # a frozen tensor changed during fine-tuning is refused at save time
    broken = copy.deepcopy(tuned)
    with torch.no_grad():
        broken.norm.weight.mul_(1.01)
    with pytest.raises(DeltaError, match="no longer match"):
        ft.save_delta(broken, tmp_path / "b.pt", base_fingerprint=fp)


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_corrupt_truncated_or_foreign_delta_raises(tmp_path):
    base = _base(1)
    tuned, fp = _finetune(base)
    path = tmp_path / "t.pt"
    ft.save_delta(tuned, path, base_fingerprint=fp)
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeltaError, match="truncated or corrupt"):
        ft.load_delta(base, tmp_path / "trunc.pt")
    # flip bytes inside the largest tensor's data: either the zip reader or the checksum must notice
    name = "blocks.0.attns.0.attn.qkv.weight"
    raw = tuned.state_dict()[name].detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw[:64])
    assert at > 0
    bad = bytearray(data)
    bad[at + 100: at + 104] = bytes(b ^ 0xFF for b in bad[at + 100: at + 104])
    (tmp_path / "flip.pt").write_bytes(bytes(bad))
    with pytest.raises(DeltaError, match="corrupt"):
        ft.load_delta(base, tmp_path / "flip.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(DeltaError, match="not a threethings_fast delta"):
        ft.read_delta(tmp_path / "foreign.pt")
    torch.save({"format": "threethings_fast.delta", "evil": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DeltaError, match="truncated or corrupt"):  # weights_only: the pickle's code never runs
        ft.read_delta(tmp_path / "evil.pt")
    with pytest.raises(FileNotFoundError):
        ft.read_delta(tmp_path / "missing.pt")


def test_storage_ratio_vit_b_is_about_one_third():
    report = ft.storage_report("B12x1")
    row = next(line for line in report.splitlines() if line.startswith("| attn"))
    assert "29,268,712" in row and "33.8%" in row


# -- fused serving -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_task_matches_reference(k, dtype, tmp_path):
    base = _base(k)
    tuned, fp = _finetune(base, num_classes=7)
    ft.save_delta(tuned, tmp_path / "t.pt", base_fingerprint=fp)
    served = ft.MultiTaskFused(base, backend="torch", dtype=dtype)
    served.add_task("t", tmp_path / "t.pt")
    ref64 = ft.load_delta(copy.deepcopy(base).double(), tmp_path / "t.pt")
    x64 = images_for(tuned, batch=3)
    out = served(x64.to(dtype), task="t")
    assert out.shape == (3, 7) and out.dtype == dtype
    if dtype == torch.float64:
        assert rel_err(out, ref64(x64)) <= 1e-10
    else:
        ref32 = ft.load_delta(base, tmp_path / "t.pt")
        assert_within_bound(out, ref32(x64.float()), ref64(x64), dtype)
    # the served features are the task's, not the base's: the fine-tuned attention changed them
    feats = served.fused_model("t")(x64.to(dtype))
    assert rel_err(feats, ref64.forward_features(x64)[:, 0]) < 1e-4
    assert rel_err(feats, copy.deepcopy(base).double().forward_features(x64)[:, 0]) > 1e-3


def test_task_switching_a_b_a(tmp_path):
    base = _base(2, dtype=torch.float64)
    a, fpa = _finetune(base, num_classes=7, seed=1)
    b, fpb = _finetune(base, num_classes=3, seed=2)
    ft.save_delta(a, tmp_path / "a.pt", base_fingerprint=fpa)
    ft.save_delta(b, tmp_path / "b.pt", base_fingerprint=fpb)
    served = ft.MultiTaskFused(base, backend="torch")
    served.add_task("a", tmp_path / "a.pt")
    served.add_task("b", tmp_path / "b.pt")
    fused = served.fused_model("a")
    x = images_for(base, batch=2)
    out_a = served(x, task="a")
    out_b = served(x, task="b")
    assert served.fused_model("b") is fused  # one fused model, re-folded in place
    out_a2 = served(x, task="a")
    assert out_b.shape == (2, 3) and out_a.shape == (2, 7)
    assert torch.equal(out_a, out_a2)
    assert rel_err(out_a, a(x)) <= 1e-10 and rel_err(out_b, b(x)) <= 1e-10
    feats_a = served.fused_model("a")(x)
    feats_b = served.fused_model("b")(x)
    assert rel_err(feats_a, feats_b) > 1e-3  # the tasks really differ in their attention
    # the stem and FFN weights were packed once and are shared: the same tensors throughout
    assert served.fused_model("a").weights.blocks[0].w_fc1 is fused.weights.blocks[0].w_fc1
    with pytest.raises(KeyError, match="unknown task"):
        served.select("c")


def test_task_switching_triton_fused_norm(tmp_path):
    """Switching tasks re-folds attention and head in place; with norm="fused" the column sums must follow
    (Triton backend; the interpreter on the CPU)."""
    pytest.importorskip("triton")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = _base(2, dtype=torch.float32)
    a, fpa = _finetune(base, num_classes=7, seed=1)
    b, fpb = _finetune(base, num_classes=3, seed=2)
    ft.save_delta(a, tmp_path / "a.pt", base_fingerprint=fpa)
    ft.save_delta(b, tmp_path / "b.pt", base_fingerprint=fpb)
    served = ft.MultiTaskFused(base, backend="triton", dtype=torch.float32, device=device, norm="fused")
    served.add_task("a", tmp_path / "a.pt")
    served.add_task("b", tmp_path / "b.pt")
    x = images_for(base, batch=2).float()
    out_a, out_b, out_a2 = (served(x.to(device), task=t).cpu() for t in ("a", "b", "a"))
    assert torch.equal(out_a, out_a2)
    torch.testing.assert_close(out_a, a(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_b, b(x), rtol=1e-4, atol=1e-4)


def test_resolution_adaptation_fused_matches(tmp_path):
    assert ttf.from_name("B12x1", img_size=384).num_tokens == 577  # 224 -> 384: N = 577
    base = _base(2, dtype=torch.float64)
    tuned, fp = _finetune(base, img_size=48, num_classes=5)  # 32 -> 48 px: N 5 -> 10
    assert tuned.pos_embed.shape == (1, 10, 64) and tuned.config.num_tokens == 10
    x = images_for(tuned, batch=2)
    assert rel_err(ttf.convert(tuned, backend="torch")(x), tuned(x)) <= 1e-10
    ft.save_delta(tuned, tmp_path / "hr.pt", base_fingerprint=fp)
    plain, fpp = _finetune(base, num_classes=4, seed=3)  # a task at the base resolution
    ft.save_delta(plain, tmp_path / "lr.pt", base_fingerprint=fpp)
    served = ft.MultiTaskFused(base, backend="torch")
    served.add_task("hr", tmp_path / "hr.pt")
    served.add_task("lr", tmp_path / "lr.pt")
    assert rel_err(served(x, task="hr"), tuned(x)) <= 1e-10
    x32 = images_for(base, batch=2)
    assert rel_err(served(x32, task="lr"), plain(x32)) <= 1e-10
    assert rel_err(served(x, task="hr"), tuned(x)) <= 1e-10


def test_full_mode_delta_is_refused_by_multitask(tmp_path):
    base = _base(1)
    tuned, fp = _finetune(base, train="full")
    ft.save_delta(tuned, tmp_path / "f.pt", base_fingerprint=fp)
    x = images_for(base, dtype=torch.float32)
    assert torch.equal(ft.load_delta(base, tmp_path / "f.pt")(x), tuned(x))
    with pytest.raises(ValueError, match="shares no weights"):
        ft.MultiTaskFused(base, backend="torch").add_task("f", tmp_path / "f.pt")


# -- measurement and CLI ---------------------------------------------------------------------------------------------
def test_measure_finetune_cost_tiny():
    model = _base(2)
    table = ft.measure_finetune_cost(model, images_for(model, batch=4, dtype=torch.float32), repeats=2, warmup=1)
    attn, full = table.row("attn"), table.row("full")
    assert attn.trainable_params < full.trainable_params and attn.stored_bytes < full.stored_bytes
    assert attn.persistent_bytes < full.persistent_bytes
    if attn.peak_bytes is not None:
        assert attn.peak_bytes < full.peak_bytes
    text = str(table)
    assert "| attn |" in text and "| full |" in text and "CPU" in text


def test_cli_demo_smoke_writes_a_delta(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from threethings_fast.finetune.cli import main
    assert main(["demo", "--smoke", "--no-progress", "--out", str(tmp_path)]) == 0
    delta = ft.read_delta(tmp_path / "taskB_attn.delta.pt")
    assert delta.train == "attn" and delta.config.img_size == 48 and delta.config.num_classes == 5
    assert (tmp_path / "base.pt").exists() and (tmp_path / "log.jsonl").exists()
    out = capsys.readouterr().out
    assert "reproduces the model exactly: True" in out and "fused" in out
    assert main(["summary", "--model", "S18x2"]) == 0
    assert "33.6%" in capsys.readouterr().out
    assert main(["cost", "--model", "tiny_2x1", "--img-size", "32", "--batch", "2", "--repeats", "1",
                 "--warmup", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "| attn |" in out and "command: `python -m threethings_fast.finetune cost --model tiny_2x1" in out
