"""Checkpoint fuzzing: generated corruptions of valid deit / timm state dicts and files. Each must give a clear error
naming the key and what was expected — or load exactly — never a model that differs silently. The table of
corruption -> error is printed at the end of the test session."""
import io
import os
import pickle

import pytest
import torch

import threethings_fast as ttf
from helpers import FUZZ_TABLE, make_model

MODELS = {
    "tiny_2x2": {},                                              # K = 2, LayerScale, linear stem
    "tiny_2x1": {"stem": "hmlp_bn", "init_values": None},       # K = 1 without LayerScale, BatchNorm stem
    "tiny_1x3": {"reg_tokens": 2, "global_pool": "avg"},        # registers, fc_norm
}


def source(name, layout):
    kw = MODELS[name]
    if layout == "deit" and kw.get("reg_tokens"):
        pytest.skip("the deit layout has no register tokens")
    model = make_model(name, **kw)
    return model, ttf.export_state_dict(model, layout)


def first_key(sd, fragment):
    return next(k for k in sd if fragment in k)


def corruptions(sd):
    """(name, corrupted state dict, regex the error must match or None = must load exactly)."""
    qkv_w = first_key(sd, "qkv.weight")
    fc1_w = first_key(sd, "fc1.weight")
    qkv_b = first_key(sd, "qkv.bias")
    proj_b = first_key(sd, "attn.proj.bias") if any("attn.proj.bias" in k for k in sd) else first_key(sd, "proj.bias")

    def edit(fn):
        out = {k: v.clone() for k, v in sd.items()}
        fn(out)
        return out

    yield "missing block weight", edit(lambda d: d.pop(fc1_w)), f"missing keys \\(1\\): \\[.*{fc1_w.split('.')[-2]}"
    yield "missing pos_embed", edit(lambda d: d.pop("pos_embed")), "pos_embed"
    yield "missing head bias", edit(lambda d: d.pop("head.bias")), "missing keys .*head.bias"
    yield "extra key", edit(lambda d: d.__setitem__("blocks.0.extra.weight", torch.zeros(3))), \
        "unexpected keys .*blocks.0.extra.weight"
    yield "transposed qkv weight", edit(lambda d: d.__setitem__(qkv_w, d[qkv_w].t().contiguous())), \
        "shape mismatches .*qkv.weight"
    yield "transposed fc1 weight", edit(lambda d: d.__setitem__(fc1_w, d[fc1_w].t().contiguous())), \
        "shape mismatches .*fc1.weight"
    yield "reshaped qkv bias", edit(lambda d: d.__setitem__(qkv_b, d[qkv_b].reshape(3, -1))), \
        "shape mismatches .*qkv.bias"
    yield "flattened pos_embed", edit(lambda d: d.__setitem__("pos_embed", d["pos_embed"].reshape(1, 1, -1))), \
        "pos_embed"
    yield "int weight", edit(lambda d: d.__setitem__(proj_b, d[proj_b].long())), \
        "expected a floating-point tensor, got torch.int64"
    yield "complex weight", edit(lambda d: d.__setitem__(proj_b, d[proj_b].to(torch.complex64))), \
        "expected a floating-point tensor, got torch.complex64"
    yield "bool weight", edit(lambda d: d.__setitem__(proj_b, d[proj_b] > 0)), \
        "expected a floating-point tensor, got torch.bool"
    yield "float16 tensor mixed in", edit(lambda d: d.__setitem__(fc1_w, d[fc1_w].half())), None
    yield "NaN weight", edit(lambda d: d[fc1_w].view(-1).__setitem__(3, float("nan"))), "NaN / Inf .*fc1.weight"
    yield "Inf bias", edit(lambda d: d[proj_b].view(-1).__setitem__(0, float("inf"))), "NaN / Inf .*proj.bias"
    yield "pos_embed of a non-square grid", edit(lambda d: d.__setitem__("pos_embed", d["pos_embed"][:, :-2])), \
        "pos_embed"
    yield "head with other classes", edit(lambda d: (d.__setitem__("head.weight", d["head.weight"][:3]),
                                                     d.__setitem__("head.bias", d["head.bias"][:3]))), \
        "num_classes=3"


@pytest.mark.parametrize("layout", ["timm", "deit"])
@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_corruptions_are_named_or_load_exactly(name, layout):
    model, sd = source(name, layout)
    for what, bad, expected in corruptions(sd):
        target = ttf.create_model(model.config).double()
        before = {k: v.clone() for k, v in target.state_dict().items()}
        if expected is None:
            ttf.load_state_dict(target, bad)
            widened = ttf.create_model(model.config).double()
            ttf.load_state_dict(widened, {k: v.double() for k, v in bad.items()})
            for k, v in widened.state_dict().items():
                assert torch.equal(target.state_dict()[k], v), (what, k)
            FUZZ_TABLE.append((f"{layout}/{name}", what, "loads exactly"))
            continue
        with pytest.raises(ttf.CheckpointError, match=expected) as info:
            ttf.load_state_dict(target, bad)
        for k, v in target.state_dict().items():      # nothing copied on a refusal
            assert torch.equal(v, before[k]), (what, k)
        FUZZ_TABLE.append((f"{layout}/{name}", what, str(info.value).splitlines()[-1].strip()[:110]))


def test_nonfinite_weights_load_with_the_explicit_opt_out():
    model, sd = source("tiny_2x2", "timm")
    sd["head.bias"][0] = float("nan")
    with pytest.raises(ttf.CheckpointError, match="allow_nonfinite=True"):
        ttf.convert(sd, backend="torch", num_heads=2)
    fused = ttf.convert(sd, backend="torch", num_heads=2, allow_nonfinite=True)
    out = fused(torch.randn(1, 3, 32, 32, dtype=torch.float64))
    assert torch.isnan(out[0, 0]) and torch.isfinite(out[0, 1:]).all()


def test_a_lost_position_row_is_caught_when_the_layout_is_given():
    """K = 1 without LayerScale: timm and deit share every key, so only pos_embed's length tells the layouts apart;
    a timm checkpoint one row short *is* a valid deit checkpoint. Given the layout, the loader refuses it."""
    model, sd = source("tiny_2x1", "timm")
    sd["pos_embed"] = sd["pos_embed"][:, 1:]
    assert ttf.detect_layout(sd) == "deit"
    with pytest.raises(ttf.CheckpointError, match="pos_embed"):
        ttf.load_state_dict(ttf.create_model(model.config).double(), sd, layout="timm")


def test_k_mismatch_says_which_k():
    _, sd = source("tiny_2x2", "timm")
    with pytest.raises(ttf.CheckpointError, match="2 branch\\(es\\), the model's 1: build the model with "
                                                  "num_parallel=2") as info:
        ttf.load_state_dict(ttf.create_model("tiny_2x1"), sd)
    FUZZ_TABLE.append(("timm/tiny_2x2", "K = 2 checkpoint into a K = 1 model", str(info.value).splitlines()[-1][:110]))


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


class _RunsCode:
    """Unpickling this calls os.system: what weights_only=True exists to refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("what", ["truncated file", "not a zip file", "empty file", "pickle that runs code",
                                  "a list, not a state dict", "a tensor, not a state dict"])
def test_checkpoint_files_that_must_not_load(tmp_path, what):
    _, sd = source("tiny_2x2", "timm")
    path = tmp_path / "ckpt.pth"
    marker = tmp_path / "code_ran"
    data = {
        "truncated file": lambda: _save(sd)[:1000],
        "not a zip file": lambda: b"this is not a checkpoint\n" * 10,
        "empty file": lambda: b"",
        "pickle that runs code": lambda: _save({"model": {"x": _RunsCode(marker)}}),
        "a list, not a state dict": lambda: _save([1, 2, 3]),
        "a tensor, not a state dict": lambda: _save(torch.zeros(3)),
    }[what]()
    path.write_bytes(data)
    with pytest.raises(ttf.CheckpointError) as info:
        ttf.read_checkpoint(path)
    assert not marker.exists(), "loading ran code"
    message = str(info.value)
    assert str(path) in message
    FUZZ_TABLE.append(("file", what, message.replace(str(path), "<file>")[:110]))
    with pytest.raises(ttf.CheckpointError):
        ttf.convert(path, num_heads=2)


def test_a_good_file_round_trips(tmp_path):
    model, sd = source("tiny_2x2", "deit")
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    fused = ttf.convert(path, backend="torch", num_heads=2)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(fused(x), model(x), rtol=1e-12, atol=1e-12)
    with pytest.raises(FileNotFoundError):
        ttf.read_checkpoint(tmp_path / "missing.pth")


def test_pickle_protocol_payload_without_torch_is_refused_too(tmp_path):
    path = tmp_path / "raw.pkl"
    marker = tmp_path / "code_ran"
    path.write_bytes(pickle.dumps({"model": _RunsCode(marker)}))
    with pytest.raises(ttf.CheckpointError):
        ttf.read_checkpoint(path)
    assert not marker.exists()
