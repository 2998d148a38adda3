import torch

from seqrec.config import ModelConfig
from seqrec.model.sasrec import SASRec, score_items


def _model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(maxlen=12, hidden_dim=16, num_blocks=2, num_heads=2, dropout=0.0, **kw)
    return SASRec(30, cfg).eval()


def test_shapes_and_fully_padded_rows_are_finite():
    model = _model()
    ids = torch.tensor([[0] * 12, [0] * 9 + [3, 4, 5]])
    out = model(ids)
    assert out.shape == (2, 12, 16)
    assert torch.isfinite(out).all()
    assert (out[0] == 0).all() and (out[1, :9] == 0).all()


def test_causality_output_at_t_ignores_later_items():
    for norm_first in (True, False):
        model = _model(norm_first=norm_first)
        a = torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
        b = a.clone()
        b[0, 7:] = torch.tensor([20, 21, 22, 23, 24])
        ya, yb = model(a), model(b)
        torch.testing.assert_close(ya[:, :7], yb[:, :7])
        assert not torch.allclose(ya[:, 7:], yb[:, 7:])


def test_padding_invariance():
    model = _model()
    short = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 5, 6, 7, 8, 9]])
    shorter_window = torch.tensor([[0, 5, 6, 7, 8, 9]])
    torch.testing.assert_close(model(short)[:, -5:], model(shorter_window)[:, -5:], rtol=1e-5, atol=1e-5)


def test_tied_and_untied_item_tables():
    tied, untied = _model(), _model(tied_embeddings=False)
    assert tied.item_embeddings() is tied.item_emb.weight
    assert untied.item_embeddings() is untied.out_emb.weight
    assert untied.item_embeddings(torch.tensor([[1, 2]])).shape == (1, 2, 16)


def test_score_items_cosine_vs_dot():
    u = torch.tensor([[3.0, 4.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 10.0]])
    torch.testing.assert_close(score_items(u, items, "dot"), torch.tensor([[3.0, 40.0]]))
    torch.testing.assert_close(score_items(u, items, "cosine"), torch.tensor([[0.6, 0.8]]))


def test_attention_key_bias_gets_no_gradient():
    """The key third of qkv.bias only shifts each query's logits by a constant (see CausalSelfAttention)."""
    model = _model()
    model.train()
    ids = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [0] * 6 + [3, 1, 4, 1, 5, 9]])
    model(ids).pow(2).sum().backward()
    for block in model.blocks:
        grad = block.attn.qkv.bias.grad
        d = grad.numel() // 3
        assert grad[:d].abs().max() > 1e-4 and grad[2 * d :].abs().max() > 1e-4  # query and value biases learn
        assert grad[d : 2 * d].abs().max() < 1e-5  # the key bias does not


def test_last_only_equals_the_last_column_of_the_full_output():
    """Ranking encodes the last position alone (``last_only``); it must be the full forward's last row,
    for both block layouts, one block and several, padded and fully padded rows."""
    ids = torch.tensor([[0] * 12, [0] * 9 + [3, 4, 5], list(range(1, 13)), [0, 0, 7, 7, 1, 2, 9, 4, 4, 3, 2, 1]])
    for norm_first in (True, False):
        for blocks in (1, 3):
            torch.manual_seed(blocks)
            cfg = ModelConfig(maxlen=12, hidden_dim=16, num_blocks=blocks, num_heads=2, dropout=0.1,
                              norm_first=norm_first)
            model = SASRec(30, cfg).eval()
            with torch.no_grad():
                last = model(ids, last_only=True)
                full = model(ids)[:, -1]
            assert last.shape == (4, 16)
            torch.testing.assert_close(last, full, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(model.user_embeddings(ids), full, rtol=1e-5, atol=1e-6)
            assert (last[0] == 0).all() and last[1:].abs().sum() > 0
