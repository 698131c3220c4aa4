import pytest
import torch

from ptmrec.recommenders import build_recommender
from ptmrec.runtime.lazy_adam import LazyAdam


def test_dense_gradients_get_torch_adam_exactly():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(6, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours, theirs = LazyAdam([a], lr=0.01), torch.optim.Adam([b], lr=0.01)
    for step in range(5):
        target = torch.randn(6, 3, generator=torch.Generator().manual_seed(step))
        for p, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["bpr", "vbpr"])
def test_sparse_gradients_move_only_the_batch_rows_and_match_adam_on_them(name):
    """One step from fresh state: the rows the batch touched move as Adam moves them, the others stay put."""
    torch.manual_seed(0)
    features = {"text": torch.randn(12, 4)} if name == "vbpr" else None
    dense = build_recommender(name, num_users=10, num_items=12, features=features)
    sparse = build_recommender(name, num_users=10, num_items=12, features=features)
    sparse.load_state_dict(dense.state_dict())
    sparse.use_sparse_gradients()
    users, pos, neg = torch.tensor([1, 3, 3]), torch.tensor([0, 5, 7]), torch.tensor([2, 2, 9])
    before = {k: v.clone() for k, v in sparse.state_dict().items()}
    for model, opt in ((dense, torch.optim.Adam(dense.parameters(), lr=0.1)), (sparse, LazyAdam(sparse.parameters(), lr=0.1))):
        opt.zero_grad()
        model.loss(users, pos, neg)[0].backward()
        opt.step()
    table = "user_embedding" if name == "vbpr" else "user_embedding.weight"
    assert sparse.state_dict()[table].shape[0] == 10
    assert next(p for n, p in sparse.named_parameters() if n == table).grad.is_sparse
    touched = {table: [1, 3], table.replace("user", "item"): [0, 2, 5, 7, 9]}
    for key, rows in touched.items():
        moved = (sparse.state_dict()[key] != before[key]).any(1).nonzero().flatten().tolist()
        assert moved == rows, key
        # Adam's first step moves every touched entry by about lr·sign(grad): the same as dense Adam there
        torch.testing.assert_close(sparse.state_dict()[key][rows], dense.state_dict()[key][rows])


def test_graph_models_refuse_sparse_gradients():
    model = build_recommender("lightgcn", num_users=5, num_items=6, train_interactions=([0, 1], [2, 3]))
    with pytest.raises(ValueError, match="lightgcn: its loss reads every embedding row"):
        model.use_sparse_gradients()
