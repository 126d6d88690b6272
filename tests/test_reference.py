"""The reference model against an independent functional forward written over the official deit state dict keys
(so the parallel-block semantics and the checkpoint layout are checked together)."""
import pytest
import torch
import torch.nn.functional as F

import threethings_fast as ttf
from helpers import images_for, make_model


def _attn(x, sd, p, heads):
    b, n, d = x.shape
    qkv = F.linear(x, sd[p + "qkv.weight"], sd[p + "qkv.bias"]).reshape(b, n, 3, heads, d // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
    return F.linear((a @ v).transpose(1, 2).reshape(b, n, d), sd[p + "proj.weight"], sd[p + "proj.bias"])


def _mlp(x, sd, p):
    return F.linear(F.gelu(F.linear(x, sd[p + "fc1.weight"], sd[p + "fc1.bias"])), sd[p + "fc2.weight"],
                    sd[p + "fc2.bias"])


def deit_functional_forward(sd, cfg, images):
    """DeiT III models_v2 semantics: class token without position, blocks `x + g_1*attn(norm1 x) + g_1_1*attn1(norm11
    x)`, then the same for the MLPs."""
    eps, d = cfg.norm_eps, cfg.embed_dim
    x = F.conv2d(images, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=cfg.patch_size)
    x = x.flatten(2).transpose(1, 2) + sd["pos_embed"]
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], 1)
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        for first, second, core, fn in (("1", "gamma_1", "attn", lambda h, q: _attn(h, sd, q, cfg.num_heads)),
                                        ("2", "gamma_2", "mlp", lambda h, q: _mlp(h, sd, q))):
            update = 0
            for j in range(cfg.num_parallel):
                sfx = str(j) if j else ""
                h = F.layer_norm(x, (d,), sd[f"{p}norm{first}{sfx}.weight"], sd[f"{p}norm{first}{sfx}.bias"], eps)
                g = sd.get(f"{p}{second}{'_' + sfx if sfx else ''}")
                out = fn(h, f"{p}{core}{sfx}.")
                update = update + (g * out if g is not None else out)
            x = x + update
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps)
    return F.linear(x[:, 0], sd["head.weight"], sd["head.bias"])


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("init_values", [1e-5, None])
def test_reference_matches_deit_semantics(k, init_values):
    model = make_model("tiny_2x1", num_parallel=k, init_values=init_values)
    x = images_for(model, 3)
    sd = ttf.export_state_dict(model, layout="deit")
    torch.testing.assert_close(model(x), deit_functional_forward(sd, model.config, x), rtol=1e-12, atol=1e-12)


def test_parallel_k1_equals_sequential_depth():
    """A K=1 'parallel' model is the sequential ViT; an x2 model differs from the 2x-deep one only in wiring."""
    seq = make_model("tiny_4x1")
    x = images_for(seq)
    sd = ttf.export_state_dict(seq, layout="timm")   # sequential timm keys: norm1, attn, ls1.gamma ...
    assert "blocks.0.norm1.weight" in sd and "blocks.0.ls1.gamma" in sd
    par = ttf.create_model("tiny_4x1", num_parallel=1).double().eval()
    ttf.load_state_dict(par, sd)
    assert torch.equal(par(x), seq(x))


def test_branch_by_branch_equals_fused_branches():
    model = make_model("tiny_2x3")
    x = images_for(model)
    torch.testing.assert_close(model(x, branch_by_branch=True), model(x), rtol=1e-12, atol=1e-12)


def test_pos_embed_resize_runs_at_new_resolution():
    model = make_model("tiny_2x2")  # 32 px: 2x2 grid
    before = model.pos_embed.detach().clone()
    model.set_img_size(48)          # 3x3 grid
    assert model.pos_embed.shape == (1, 10, 64) and model.config.img_size == 48
    assert torch.equal(model.pos_embed[:, :1], before[:, :1])  # class-token position kept
    assert model(images_for(model)).shape == (2, 10)
    model.set_img_size(48)
    assert model.pos_embed.shape == (1, 10, 64)


def test_pos_embed_resize_224_to_384():
    from threethings_fast.reference import resize_pos_embed
    pos = torch.randn(1, 197, 8)
    assert resize_pos_embed(pos, 24).shape == (1, 577, 8)
    # a constant field stays constant under bicubic interpolation
    const = torch.ones(1, 197, 8)
    torch.testing.assert_close(resize_pos_embed(const, 24), torch.ones(1, 577, 8))


@pytest.mark.parametrize("bad, err, match", [
    (lambda m: torch.randn(3, 32, 32, dtype=torch.float64), ValueError, "rank 3"),
    (lambda m: torch.randn(2, 4, 32, 32, dtype=torch.float64), ValueError, "3 input channels"),
    (lambda m: torch.randn(2, 3, 40, 40, dtype=torch.float64), ValueError, "not divisible by the patch size"),
    (lambda m: torch.randn(2, 3, 48, 48, dtype=torch.float64), ValueError, "set_img_size"),
    (lambda m: torch.randn(2, 3, 32, 32, dtype=torch.float32), TypeError, "float64"),
    (lambda m: torch.randn(0, 3, 32, 32, dtype=torch.float64), ValueError, "empty batch"),
    (lambda m: "an image", TypeError, "torch.Tensor"),
])
def test_reference_bad_input(bad, err, match):
    model = make_model("tiny_2x2")
    with pytest.raises(err, match=match):
        model(bad(model))
