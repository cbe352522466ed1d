"""The lean CPU kernels (models/kernels.py): the attention core gives torch's attention and its
gradients, with dropout on the same keep mask too; the 16-bit dropout drops p of the values, keeps the
layer unbiased, and draws from torch's generator (seeded, repeatable); the Transformer trained on its
real slots only (padding packed away) gives the real slots' outputs and every gradient of the full grid;
the training step's item lookup and real targets, by hand."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from pixelrec.models import kernels
from pixelrec.models.layers import MultiHeadAttention, Packing, PositionalTransformer, attention_mask


def reference_attention(qkv, n_heads, allowed, keep=None):
    """Attention written out from its definition (softmax of masked scaled scores, dropout, values)."""
    b, length, width = qkv.shape
    dim = width // 3
    q, k, v = qkv.view(b, length, 3, n_heads, dim // n_heads).permute(2, 0, 3, 1, 4)
    probs = ((q @ k.transpose(-1, -2)) / (dim // n_heads) ** 0.5).masked_fill(~allowed, float("-inf")).softmax(-1)
    if keep is not None:
        probs = probs * keep.view(b, n_heads, length, length)
    return (probs @ v).transpose(1, 2).reshape(b, length, dim)


def sequences(b=6, length=9, causal=True, seed=0):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randint(1, 50, (b, length), generator=generator)
    context[0, :4] = 0  # left padding in some rows
    context[1, :-1] = 0  # one real item only
    return attention_mask(context, causal)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_and_its_gradients_equal_the_definition(causal):
    torch.manual_seed(0)
    allowed = sequences(causal=causal)
    qkv = torch.randn(6, 9, 3 * 12, requires_grad=True)
    upstream = torch.randn(6, 9, 12)
    ours = kernels.attention(qkv, 3, allowed, p=0.0, training=True)
    assert type(ours.grad_fn).__name__ == "_AttentionBackward"  # the lean kernel, not torch's
    (grad_ours,) = torch.autograd.grad((ours * upstream).sum(), qkv)
    theirs = reference_attention(qkv, 3, allowed)
    (grad_theirs,) = torch.autograd.grad((theirs * upstream).sum(), qkv)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-6)
    # and torch's own fused attention, which the kernel replaces on the CPU
    q, k, v = qkv.view(6, 9, 3, 3, 4).permute(2, 0, 3, 1, 4)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed).transpose(1, 2).reshape(6, 9, 12)
    torch.testing.assert_close(ours, sdpa, rtol=1e-5, atol=1e-6)


def test_attention_gradients_pass_gradcheck_in_double():
    allowed = sequences(b=3, length=5)
    qkv = torch.randn(3, 5, 3 * 4, dtype=torch.float64, requires_grad=True)
    # float64 takes torch's path; the kernel's own arithmetic is checked against it in float32 above
    assert torch.autograd.gradcheck(lambda t: kernels.attention(t, 2, allowed, 0.0, True), (qkv,))
    ours = kernels._Attention.apply(qkv.float(), allowed, 2, 0.0)
    torch.testing.assert_close(ours.double(), reference_attention(qkv, 2, allowed), rtol=1e-5, atol=1e-6)


def test_attention_dropout_is_the_definition_with_the_drawn_keep_mask():
    allowed = sequences()
    qkv = torch.randn(6, 9, 36, requires_grad=True)
    upstream = torch.randn(6, 9, 12)
    torch.manual_seed(7)
    ours = kernels.attention(qkv, 3, allowed, p=0.3, training=True)
    (grad_ours,) = torch.autograd.grad((ours * upstream).sum(), qkv)
    torch.manual_seed(7)
    keep = kernels.keep_mask(torch.empty(6 * 3, 9, 9), 0.3)
    theirs = reference_attention(qkv, 3, allowed, keep)
    (grad_theirs,) = torch.autograd.grad((theirs * upstream).sum(), qkv)
    assert 0 < (keep == 0).float().mean() < 1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-5, atol=1e-6)
    # out of training the same module drops nothing
    torch.testing.assert_close(kernels.attention(qkv, 3, allowed, 0.3, training=False),
                               reference_attention(qkv, 3, allowed), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_dropout_drops_p_and_stays_unbiased(p):
    torch.manual_seed(1)
    x = torch.rand(2_000_000) + 0.5
    out = kernels.dropout(x, p, training=True)
    dropped = (out == 0).float().mean().item()
    assert dropped == pytest.approx(p, abs=4 * (p * (1 - p) / x.numel()) ** 0.5 + 1 / 65536)
    kept = out != 0
    torch.testing.assert_close(out[kept] / x[kept], torch.full_like(x[kept], 65536 / (65536 - round(p * 65536))))
    assert out.mean().item() == pytest.approx(x.mean().item(), rel=2e-3)


def test_dropout_draws_from_torchs_generator():
    x = torch.ones(64, 10, 64)
    torch.manual_seed(3)
    first = kernels.dropout(x, 0.2, training=True)
    torch.manual_seed(3)
    again = kernels.dropout(x, 0.2, training=True)
    other = kernels.dropout(x, 0.2, training=True)
    assert torch.equal(first, again) and not torch.equal(first, other)
    # each 16-bit lane of a 64-bit draw is used: masks of neighbouring values are not tied
    lanes = (first.flatten()[: 4 * 4000] == 0).view(4000, 4).float()
    assert all(abs(lanes[:, i].mean().item() - 0.2) < 0.03 for i in range(4))
    assert abs((lanes[:, 0] * lanes[:, 1]).mean().item() - 0.04) < 0.015


def test_dropout_identity_out_of_training_and_at_zero():
    x = torch.randn(100)
    assert kernels.dropout(x, 0.5, training=False) is x
    assert kernels.dropout(x, 0.0, training=True) is x
    assert torch.equal(kernels.dropout(x, 1.0, training=True), torch.zeros_like(x))
    module = kernels.Dropout(0.4).eval()
    assert module(x) is x


def test_the_attention_layer_keeps_its_parameters_and_state_dict():
    layer = MultiHeadAttention(16, 2, 0.1)
    assert sorted(layer.state_dict()) == ["out.bias", "out.weight", "qkv.bias", "qkv.weight"]


@pytest.mark.parametrize("causal", [True, False])
def test_training_on_packed_real_slots_gives_the_full_grids_outputs_and_gradients(causal):
    torch.manual_seed(0)
    body = PositionalTransformer(7, 16, 2, 2, 32, dropout=0.0).train()
    context = torch.randint(1, 50, (5, 7))
    context[0, :3] = 0
    context[1, :-1] = 0
    context[3, :6] = 0
    real = context > 0
    x = torch.randn(5, 7, 16, requires_grad=True)
    weights = torch.randn(5, 7, 16) * real[..., None]  # a loss that reads the real slots only

    def outputs_and_gradients(packed: bool):
        body.zero_grad()
        x.grad = None
        with pytest.MonkeyPatch.context() as patch:
            if not packed:
                patch.setattr(Packing, "of", classmethod(lambda cls, real: None))
            y = body(x, real, causal=causal)
        (y * weights).sum().backward()
        return y.detach(), x.grad.clone(), {name: p.grad.clone() for name, p in body.named_parameters()}

    full, packed = outputs_and_gradients(False), outputs_and_gradients(True)
    assert torch.allclose(packed[0][real], full[0][real], atol=1e-5)
    assert not torch.allclose(packed[0][~real], full[0][~real])  # the packing ran: padding holds other values
    assert torch.allclose(packed[1], full[1], atol=1e-5)
    assert full[2].keys() == packed[2].keys()
    for name in full[2]:
        assert torch.allclose(packed[2][name], full[2][name], atol=1e-5), name


def test_packing_skips_padding_only_when_there_is_some_and_keeps_the_order():
    real = torch.tensor([[False, True, True], [True, True, True]])
    slots = Packing.of(real)
    assert slots.rows.tolist() == [1, 2, 3, 4, 5]
    x = torch.arange(18.0).view(2, 3, 3)
    assert torch.equal(slots.pack(x), x.view(6, 3)[1:])
    assert torch.equal(slots.unpack(slots.pack(x))[real], x[real])
    # padding takes no gradient back through the packing
    leaf = x.clone().requires_grad_()
    slots.pack(leaf).sum().backward()
    assert leaf.grad.tolist() == (torch.ones(2, 3, 3) * real[..., None]).tolist()
    assert Packing.of(torch.ones(2, 3, dtype=torch.bool)) is None
    assert Packing.of(torch.zeros(2, 3, dtype=torch.bool)) is None

def test_evaluation_keeps_the_full_grid(monkeypatch):
    def refuse(cls, real):
        raise AssertionError("evaluation packed its slots")

    body = PositionalTransformer(3, 4, 1, 1, 8, dropout=0.0)
    real = torch.tensor([[False, True, True], [True, True, True]])
    x = torch.randn(2, 3, 4)
    monkeypatch.setattr(Packing, "of", classmethod(refuse))
    body.eval()(x, real, causal=True)  # no packing outside training
    with pytest.raises(AssertionError, match="packed"):
        body.train()(x, real, causal=True)


def test_a_batch_lookup_finds_each_items_row_and_zeros_for_padding():
    from pixelrec.items.base import ItemLookup

    vectors = torch.tensor([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    lookup = ItemLookup(torch.tensor([4, 9, 17]), vectors, n_items=20)
    idx = torch.tensor([[0, 9, 4], [17, 0, 9]])
    assert lookup.rows(idx).tolist() == [[0, 2, 1], [3, 0, 2]]
    assert lookup(idx).tolist() == [[[0, 0], [2, 2], [1, 1]], [[3, 3], [0, 0], [2, 2]]]
    assert lookup(idx.t()).tolist() == lookup(idx).transpose(0, 1).tolist()  # a non-contiguous index too


def test_real_targets_and_their_positions_in_row_major_order():
    from pixelrec.data.batch import Batch

    batch = Batch(users=torch.tensor([0, 1]), context=torch.zeros(2, 3, dtype=torch.long),
                  targets=torch.tensor([[0, 5, 6], [7, 0, 8]]))
    targets, positions = batch.real_targets()
    assert targets.tolist() == [5, 6, 7, 8] and positions.tolist() == [1, 2, 3, 5]
