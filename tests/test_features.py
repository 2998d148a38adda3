"""Side features: FeatureSet loaders, the item/user towers, action-weighted losses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seqrec.config import DataConfig, LossConfig, ModelConfig
from seqrec.data.batches import BatchBuilder
from seqrec.data.dataset import Interactions
from seqrec.data.feature_set import FeatureSet, csr_from_lists
from seqrec.data.features import read_features
from seqrec.data.side_features import beauty_features, ml1m_features
from seqrec.losses import bce_loss, full_softmax_loss, infonce_loss
from seqrec.model.features import build_model, model_from_state
from seqrec.train.objective import Objective, _candidate_vectors

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
NUM_ITEMS, NUM_USERS, D = 12, 4, 8


def _features(seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    present = rng.random(NUM_ITEMS + 1) < 0.6
    present[[1, 2]] = [True, False]  # item 1 has a vector, item 2 has none
    return FeatureSet(
        num_items=NUM_ITEMS,
        num_users=NUM_USERS,
        item_categorical={"color": np.r_[0, rng.integers(1, 5, NUM_ITEMS)]},
        item_multi={"tags": csr_from_lists([[]] + [list(rng.integers(1, 7, 1 + i % 3)) for i in range(NUM_ITEMS)])},
        item_continuous=rng.normal(size=(NUM_ITEMS + 1, 1)).astype(np.float32),
        continuous_names=("price",),
        item_vectors={"img": (rng.normal(size=(NUM_ITEMS + 1, 6)).astype(np.float32), present)},
        user_categorical={"age": np.array([1, 2, 3, 1])},
        user_multi={"likes": csr_from_lists([[1, 2], [], [3], [2, 3, 1]])},
        cardinality={"color": 5, "tags": 7, "age": 4, "likes": 4},
    )


def _model(user_features: str = "none", use_item_id: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = ModelConfig(maxlen=8, hidden_dim=D, num_blocks=1, num_heads=2, dropout=0.0, tied_embeddings=True,
                      user_features=user_features, use_item_id=use_item_id)
    return build_model(NUM_ITEMS, cfg, _features()).eval(), cfg


def test_tower_shapes_and_padding_row():
    model, _ = _model(user_features="token")
    ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 12]])
    assert model.item_embeddings(ids).shape == (2, 4, D)
    assert model.item_embeddings(torch.tensor([[[1, 2, 3]]])).shape == (1, 1, 3, D)
    table = model.item_embeddings()
    assert table.shape == (NUM_ITEMS + 1, D) and (table[0] == 0).all() and (table[1:].abs().sum(1) > 0).all()
    assert model.user_tower(torch.tensor([0, 3])).shape == (2, D)
    assert model(ids, users=torch.tensor([0, 1])).shape == (2, 4, D)
    features_only, _ = _model(use_item_id=False)
    assert features_only.item_tower.id_emb is None and features_only.item_embeddings().shape == (NUM_ITEMS + 1, D)


def test_item_tower_on_empty_ids():
    model, _ = _model()
    for shape in [(0,), (2, 0), (0, 3)]:
        ids = torch.zeros(shape, dtype=torch.long)
        assert model.item_tower(ids).shape == (*shape, D)
        assert model.item_embeddings(ids).shape == (*shape, D)


def test_absent_vector_is_the_learned_default_not_zeros():
    model, _ = _model()
    tower = model.item_tower
    before = tower(torch.tensor([1, 2]))
    tower.vec_img[2] = 1000.0  # an absent row's stored values must not matter
    torch.testing.assert_close(tower(torch.tensor([1, 2])), before)
    with torch.no_grad():
        tower.vec_absent["img"] += 1.0  # ... the learned absent vector does
    after = tower(torch.tensor([1, 2]))
    torch.testing.assert_close(after[0], before[0])
    assert not torch.allclose(after[1], before[1])
    # the absent vector is not the projection of a zero vector
    assert not torch.allclose(tower.vec_absent["img"], tower.vec_proj["img"].bias)


def test_unseen_item_with_features_gets_its_own_vector():
    model, _ = _model()
    features = _features()
    rows = np.r_[np.arange(NUM_ITEMS + 1), 3]  # a new item (row NUM_ITEMS + 1) with item 3's features ...
    extended = features.take_items(rows)
    extended.item_categorical["color"][NUM_ITEMS + 1] = (features.item_categorical["color"][3] % 4) + 1  # ... but its own color
    model.item_tower.set_catalogue(extended, id_rows=np.r_[np.arange(NUM_ITEMS + 1), 0])  # no trained id
    table = model.item_embeddings()
    new = table[NUM_ITEMS + 1]
    assert new.abs().sum() > 0  # not padding
    assert all(not torch.allclose(new, table[i]) for i in range(NUM_ITEMS + 1))
    # the training rows keep their vectors
    fresh, _ = _model()
    torch.testing.assert_close(table[: NUM_ITEMS + 1], fresh.item_embeddings())


def test_id_dropout_trains_the_unseen_item_case():
    torch.manual_seed(0)
    cfg = ModelConfig(maxlen=8, hidden_dim=D, num_blocks=1, dropout=0.0, item_id_dropout=0.5)
    model = build_model(NUM_ITEMS, cfg, _features())
    tower = model.item_tower
    ids = torch.arange(1, NUM_ITEMS + 1)
    with_id = tower.eval()(ids)
    tower.id_rows = torch.zeros_like(tower.id_rows)  # every item as if unseen: no id embedding
    without_id = tower(ids)
    tower.id_rows = torch.arange(NUM_ITEMS + 1)
    trained = tower.train()(torch.cat([ids, ids]))  # a repeated id gets one draw
    torch.testing.assert_close(trained[:NUM_ITEMS], trained[NUM_ITEMS:])
    dropped = torch.isclose(trained[:NUM_ITEMS], without_id).all(1)
    kept = torch.isclose(trained[:NUM_ITEMS], with_id).all(1)
    assert (dropped | kept).all() and dropped.any() and kept.any()


def test_one_tower_for_inputs_positives_negatives_and_candidates(tmp_path):
    model, cfg = _model()
    table = model.item_embeddings()
    ids = torch.tensor([[0, 5, 6, 7], [1, 2, 2, 3]])
    torch.testing.assert_close(model._item_inputs(ids), table[ids])

    class _Batch:  # only what _candidate_vectors reads
        pos_ids = torch.tensor([[5, 6, 7, 0], [2, 2, 3, 4]])
        neg_ids = torch.tensor([[[9, 9], [1, 2], [3, 3], [0, 0]], [[7, 8], [5, 5], [9, 1], [11, 12]]])

    encoded = []
    original = model.item_tower.encode_rows
    model.item_tower.encode_rows = lambda rows, *side: encoded.append(rows.clone()) or original(rows, *side)
    pos, neg = _candidate_vectors(model, _Batch)
    del model.item_tower.encode_rows
    torch.testing.assert_close(pos, table[_Batch.pos_ids])
    torch.testing.assert_close(neg, table[_Batch.neg_ids])
    distinct = torch.unique(torch.cat([_Batch.pos_ids.flatten(), _Batch.neg_ids.flatten()]))
    assert len(encoded) == 1 and torch.equal(encoded[0], distinct)  # each distinct id embedded once

    # the checkpoint rebuilds the same tower: retrieval candidates get the same vectors
    restored = model_from_state(NUM_ITEMS, cfg, model.state_dict()).eval()
    torch.testing.assert_close(restored.item_embeddings(), table)


def test_untied_tower_adds_output_ids_to_candidates_only():
    torch.manual_seed(0)
    cfg = ModelConfig(maxlen=8, hidden_dim=D, num_blocks=1, dropout=0.0, tied_embeddings=False)
    model = build_model(NUM_ITEMS, cfg, _features()).eval()
    tower = model.item_tower
    assert tower.out_id_emb is not None and tower.out_fuse is not None and model.out_emb is None
    ids = torch.arange(1, NUM_ITEMS + 1)
    inputs, candidates = model._item_inputs(ids), model.item_embeddings(ids)
    torch.testing.assert_close(model.item_embeddings()[1:], candidates)  # the whole table: the candidate side
    # a gradient of the loss reaches the output ids and the output fusing layer only through candidates
    model.item_embeddings(torch.tensor([3])).sum().backward()
    assert tower.out_id_emb.weight.grad[3].abs().sum() > 0 and tower.out_id_emb.weight.grad[4].abs().sum() == 0
    assert tower.out_fuse.weight.grad.abs().sum() > 0 and tower.fuse.weight.grad is None
    model.zero_grad(set_to_none=True)
    model._item_inputs(torch.tensor([3])).sum().backward()
    assert tower.out_fuse.weight.grad is None and tower.out_id_emb.weight.grad is None
    # with the input side's fusing weights, candidates are the input vectors plus the output ids
    with torch.no_grad():
        saved = tower.out_fuse.weight.clone(), tower.out_fuse.bias.clone()
        tower.out_fuse.weight.copy_(tower.fuse.weight)
        tower.out_fuse.bias.copy_(tower.fuse.bias)
        torch.testing.assert_close(model.item_embeddings(ids), inputs + tower.out_id_emb(ids))
        # an item without a trained id (unseen in training) scores by its features alone
        tower.id_rows = torch.zeros_like(tower.id_rows)
        torch.testing.assert_close(model.item_embeddings(ids), model._item_inputs(ids))
        tower.id_rows = torch.arange(NUM_ITEMS + 1)
        tower.out_fuse.weight.copy_(saved[0])
        tower.out_fuse.bias.copy_(saved[1])
    # the checkpoint rebuilds the output ids and the output fusing layer
    restored = model_from_state(NUM_ITEMS, cfg, model.state_dict()).eval()
    torch.testing.assert_close(restored.item_embeddings(ids), candidates)
    # a checkpoint from before the output fusing layer (schema without it) loads with the shared layer
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("item_tower.out_fuse.")}
    old["item_tower._extra_state"] = {k: v for k, v in old["item_tower._extra_state"].items() if k != "output_fuse"}
    legacy = model_from_state(NUM_ITEMS, cfg, old).eval()
    assert legacy.item_tower.out_fuse is None
    torch.testing.assert_close(legacy.item_embeddings(ids), legacy._item_inputs(ids) + tower.out_id_emb(ids))
    with pytest.raises(ValueError, match="use_item_id"):
        build_model(NUM_ITEMS, ModelConfig(maxlen=8, hidden_dim=D, tied_embeddings=False, use_item_id=False, dropout=0.0), _features())


@pytest.mark.parametrize("mode", ["token", "add"])
def test_user_modes_keep_causality_and_padding_invariance(mode):
    model, _ = _model(user_features=mode)
    users = torch.tensor([1, 3])
    a = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8]])
    b = a.clone()
    b[:, 5:] = torch.tensor([9, 10, 11])
    ya, yb = model(a, users=users), model(b, users=users)
    torch.testing.assert_close(ya[:, :5], yb[:, :5])
    assert not torch.allclose(ya[:, 5:], yb[:, 5:])
    short = torch.tensor([[0, 0, 0, 0, 0, 4, 5, 6]])
    trimmed = torch.tensor([[4, 5, 6]])
    torch.testing.assert_close(model(short, users=users[:1])[:, -3:], model(trimmed, users=users[:1]), rtol=1e-5, atol=1e-5)
    assert (model(short, users=users[:1])[:, :5] == 0).all()
    # the user vector is used: another user (different features) changes the output
    assert not torch.allclose(model(trimmed, users=torch.tensor([0])), model(trimmed, users=torch.tensor([2])))


def _infonce_rows(seq, pos, neg, mask, pos_ids, neg_ids, tau):
    """Dense reference: one loss per valid row; pool = every valid position's negatives, hits masked."""
    b, t = mask.nonzero(as_tuple=True)
    q = F.normalize(seq[b, t], dim=-1) / tau
    p = F.normalize(pos[b, t], dim=-1)
    pool_ids = neg_ids[b, t].reshape(-1)
    pool = F.normalize(neg[b, t].reshape(-1, neg.shape[-1]), dim=-1)
    pool, pool_ids = pool[pool_ids != 0], pool_ids[pool_ids != 0]
    logits = q @ pool.T
    logits = logits.masked_fill(pool_ids[None, :] == pos_ids[b, t][:, None], float("-inf"))
    full = torch.cat([(q * p).sum(-1, keepdim=True), logits], dim=1)
    return -torch.log_softmax(full, dim=1)[:, 0], (b, t)


def test_action_weights_give_the_hand_computed_weighted_mean():
    torch.manual_seed(0)
    B, L, K, Dm = 3, 5, 2, 6
    seq = torch.randn(B, L, Dm, dtype=torch.float64, requires_grad=True)
    pos = torch.randn(B, L, Dm, dtype=torch.float64)
    pos_ids = torch.randint(1, 9, (B, L))
    neg_ids = torch.randint(1, 9, (B, L, K))
    neg = torch.randn(9, Dm, dtype=torch.float64)[neg_ids]  # same id, same vector (InfoNCE groups them)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, :2] = False
    actions = torch.tensor([[0, 0, 1, 0, 2], [1, 0, 0, 2, 0], [0, 1, 1, 0, 0]])
    weights = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64)[actions]

    rows, (b, t) = _infonce_rows(seq, pos, neg, mask, pos_ids, neg_ids, 0.1)
    w = weights[b, t]
    expected = (w * rows).sum() / w.sum()
    got = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.1, weights=weights)
    torch.testing.assert_close(got, expected)
    unweighted = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.1)
    torch.testing.assert_close(unweighted, rows.mean())
    assert not torch.allclose(got, unweighted)
    (g_got,) = torch.autograd.grad(got, seq)
    (g_exp,) = torch.autograd.grad(expected, seq)
    torch.testing.assert_close(g_got, g_exp)
    # weight 0 restricts the positives to the other action types; the pool keeps every negative
    only_clicks = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64)[actions]
    w0 = only_clicks[b, t]
    torch.testing.assert_close(infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.1, weights=only_clicks),
                               (w0 * rows).sum() / w0.sum())

    # full softmax over a small catalogue, by hand
    table = torch.randn(9, Dm, dtype=torch.float64)
    q = F.normalize(seq[b, t], dim=-1) / 0.1
    full_rows = -torch.log_softmax(q @ F.normalize(table[1:], dim=-1).T, dim=1)[torch.arange(len(b)), pos_ids[b, t] - 1]
    torch.testing.assert_close(full_softmax_loss(seq, table, mask, pos_ids, 0.1, weights=weights),
                               (w * full_rows).sum() / w.sum())

    # BCE: softplus(-pos) + mean_k softplus(neg) per position, weighted mean over valid positions
    per = F.softplus(-(seq * pos).sum(-1)) + F.softplus(torch.einsum("bld,blkd->blk", seq, neg)).mean(-1)
    wm = weights * mask
    torch.testing.assert_close(bce_loss(seq, pos, neg, mask, weights=weights), (per * wm).sum() / wm.sum())
    torch.testing.assert_close(bce_loss(seq, pos, neg, mask), per[mask].mean())
    half = torch.full((B, L), 0.5, dtype=torch.float64)  # a weight sum below 1 is still a weighted mean
    one = torch.zeros(B, L, dtype=torch.bool)
    one[1, 1] = True
    torch.testing.assert_close(bce_loss(seq, pos, neg, one, weights=half), per[1, 1])


def test_batches_carry_positive_actions_and_the_objective_weights_them():
    items = np.array([1, 2, 3, 4, 5, 1, 3, 5, 2, 4])
    actions = np.array([0, 1, 0, 2, 0, 0, 0, 1, 1, 0])
    offsets = np.array([0, 5, 10])
    builder = BatchBuilder(offsets, items, np.array([5, 5]), 5, maxlen=6, actions=actions)
    batch = builder.build(np.array([0, 1]), np.random.default_rng(0))
    for r, u in enumerate([0, 1]):
        valid = batch.loss_mask[r].numpy()
        assert batch.pos_actions[r][valid].tolist() == actions[offsets[u] + 1 : offsets[u + 1]].tolist()
    model, _ = _model()
    objective = Objective(LossConfig(name="bce", action_weights=(1.0, 3.0, 5.0)))
    seq = model(batch.input_ids, users=batch.users)
    pos, neg = _candidate_vectors(model, batch)
    weights = torch.tensor([1.0, 3.0, 5.0])[batch.pos_actions]
    torch.testing.assert_close(objective(model, batch), bce_loss(seq, pos, neg, batch.loss_mask, weights=weights))
    no_actions = BatchBuilder(offsets, items, np.array([5, 5]), 5, maxlen=6).build(np.array([0]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="action"):
        objective(model, no_actions)


def _ids_only(num_items: int, num_users: int) -> Interactions:
    """Interactions whose raw ids are 1..N (all the loaders read)."""
    return Interactions(
        offsets=np.zeros(num_users + 1, dtype=np.int64), items=np.zeros(0, dtype=np.int64),
        user_ids=np.arange(1, num_users + 1), item_ids=np.arange(num_items + 1),
    )


@pytest.mark.skipif(not (SHARED / "ml-1m" / "movies.dat").is_file(), reason="ML-1M side files not available")
def test_ml1m_loader_on_the_shared_files():
    features = ml1m_features(SHARED / "ml-1m", _ids_only(3416, 6040))
    offsets, values = features.item_multi["genre"]
    assert len(np.unique(values)) == 18 and features.cardinality["genre"] == 19
    assert (np.diff(offsets)[1:] > 0).all()  # every SASRec item is a movie with genres
    assert (features.item_categorical["year"][1:] > 0).all()
    for name, size in (("gender", 2), ("age", 7), ("occupation", 21)):
        column = features.user_categorical[name]
        assert (column > 0).all() and len(np.unique(column)) == size
    # SASRec user 1 is GroupLens user 5988; SASRec item 1 is movie 1198 (Raiders of the Lost Ark: Action|Adventure)
    genre_of = {g: j + 1 for j, g in enumerate(sorted(
        ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
         "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]))}
    assert sorted(values[offsets[1] : offsets[2]].tolist()) == [genre_of["Action"], genre_of["Adventure"]]


@pytest.mark.skipif(not (SHARED / "amazon-beauty" / "Beauty_item2attributes.json").is_file(),
                    reason="Beauty attributes not available")
def test_beauty_loader_on_the_shared_file():
    features = beauty_features(SHARED / "amazon-beauty", _ids_only(12101, 10))
    offsets, values = features.item_multi["attribute"]
    assert len(np.unique(values)) == 637 and features.cardinality["attribute"] == 638
    assert (np.diff(offsets)[1:] > 0).all()


def test_data_features_setting_names_the_loader(tmp_path):
    inter = _ids_only(3, 2)
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps({"1": [2], "2": [1, 3], "3": []}))
    features = read_features(DataConfig(features=str(path)), inter)
    assert features.item_multi["attribute"][0].tolist() == [0, 0, 1, 3, 3]
    assert read_features(DataConfig(features=None), inter) is None
    assert read_features(DataConfig(features="none"), inter) is None
    with pytest.raises(ValueError, match="data.path"):
        read_features(DataConfig(features="ml-1m"), inter)
    with pytest.raises(FileNotFoundError):
        read_features(DataConfig(features=str(tmp_path / "missing")), inter)


@pytest.mark.parametrize("mode", ["none", "token", "add"])
def test_ranking_vector_is_the_last_output_with_user_features(mode):
    """``user_embeddings`` encodes the last position alone (``last_only``), also with a user token in
    front (a row without items: the token's slot is then the last column, and its output stays zero)."""
    model, _ = _model(user_features=mode)
    ids = torch.tensor([[0, 0, 3, 4], [1, 2, 3, 12], [0, 0, 0, 0]])
    users = None if mode == "none" else torch.tensor([0, 1, 2])
    with torch.no_grad():
        full = model(ids, users=users)[:, -1]
        torch.testing.assert_close(model.user_embeddings(ids, users), full, rtol=1e-5, atol=1e-6)
    assert (full[2] == 0).all() and full[:2].abs().sum() > 0
