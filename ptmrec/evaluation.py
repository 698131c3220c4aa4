"""MMRec's evaluation protocol: full ranking over all items, Recall / NDCG / Precision / MAP at K.

Protocol (MMRec `utils/dataloader.py` EvalDataLoader, `common/trainer.py` Trainer.evaluate,
`utils/metrics.py`):

- Every user with at least one item in the evaluated split is ranked against the whole catalogue.
- Only the user's *training* items are masked, for the valid split and for the test split alike: MMRec
  builds both evaluation loaders with the training set as the mask source, so a user's valid items stay
  rankable (and count as misses) when the test split is evaluated, and test items when valid is.
- Metrics are per user at each K, then averaged over the evaluated users, with ``pos_len`` the number of
  the user's items in the split:
    recall@K    = hits@K / pos_len
    precision@K = hits@K / K
    ndcg@K      = sum_{r<=K, hit} 1/log2(r+1)  /  sum_{r<=min(pos_len,K)} 1/log2(r+1)
    map@K       = sum_{r<=K, hit} (hits@r / r)  /  min(pos_len, K)
- MMRec drops users absent from training from the splits (cold start); here such a user is simply
  ranked with nothing masked. MMRec rounds results to 4 decimals; here they are left unrounded.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, Union

import numpy as np
import torch

METRICS = ("recall", "ndcg", "precision", "map")

# (indptr [num_users + 1], indices [nnz]): row u's items are indices[indptr[u]:indptr[u + 1]]. Anything with
# .indptr and .indices (a scipy.sparse.csr_matrix) and {user: [items]} dicts are accepted as well.
CSR = tuple[np.ndarray, np.ndarray]
UserItems = Union[CSR, Mapping[int, Sequence[int]]]


def csr_from_pairs(users: np.ndarray, items: np.ndarray, num_users: int) -> CSR:
    """Group (user, item) pairs by user: -> (indptr [num_users + 1], indices [n]), items in input order."""
    users = np.asarray(users, dtype=np.int64)
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=num_users), out=indptr[1:])
    return indptr, np.asarray(items, dtype=np.int64)[order]


def _as_csr(data: UserItems, num_rows: int) -> CSR:
    """Any accepted user -> items form as CSR arrays with at least num_rows rows."""
    if isinstance(data, Mapping):
        users = np.concatenate([np.full(len(v), u, dtype=np.int64) for u, v in data.items()] or [np.empty(0, np.int64)])
        items = np.concatenate([np.asarray(v, dtype=np.int64) for v in data.values()] or [np.empty(0, np.int64)])
        return csr_from_pairs(users, items, max(num_rows, int(users.max(initial=-1)) + 1))
    indptr, indices = (data.indptr, data.indices) if hasattr(data, "indptr") else data
    indptr = np.asarray(indptr, dtype=np.int64)
    if len(indptr) - 1 < num_rows:  # rows past the end hold no items
        indptr = np.concatenate([indptr, np.full(num_rows - len(indptr) + 1, indptr[-1])])
    return indptr, np.asarray(indices, dtype=np.int64)


def _num_rows(data: UserItems) -> int:
    if isinstance(data, Mapping):
        return max(data, default=-1) + 1
    indptr = data.indptr if hasattr(data, "indptr") else data[0]
    return len(indptr) - 1


def _rows(csr: CSR, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position in `users`, item) for every item of the given rows, without a Python loop."""
    indptr, indices = csr
    starts, lengths = indptr[users], indptr[users + 1] - indptr[users]
    positions = np.repeat(np.arange(len(users)), lengths)
    # index of each entry within its row, added to the row's start
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return positions, indices[np.repeat(starts, lengths) + offsets]


def evaluate(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    ground_truth: UserItems,
    train_mask: UserItems,
    ks: Sequence[int] = (10, 20, 50),
    batch_users: int = 4096,
) -> dict[str, float]:
    """Full-ranking metrics of a scorer on one split (valid or test), MMRec's protocol (module docstring).

    Args:
        score_fn: [B] LongTensor of user ids -> [B, num_items] scores (e.g. `model.full_scores`), on any
            device; it runs under torch.no_grad and its output is not modified.
        ground_truth: the split's items per user; users without any are skipped.
        train_mask: the training items per user, excluded from every ranking.
        ks: cut-offs.
        batch_users: users scored at once; memory is about batch_users x num_items scores.

    Returns:
        {"recall@10": ..., "ndcg@10": ..., "precision@10": ..., "map@10": ..., ...} for every K, averaged
        over the evaluated users; every value is 0.0 when no user has ground truth.
    """
    return evaluate_splits(score_fn, {"split": ground_truth}, train_mask, ks, batch_users)["split"]


def evaluate_splits(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    splits: Mapping[str, UserItems],
    train_mask: UserItems,
    ks: Sequence[int] = (10, 20, 50),
    batch_users: int = 4096,
) -> dict[str, dict[str, float]]:
    """`evaluate` for several splits at once ({name: ground truth} -> {name: metrics}), each exactly as
    `evaluate` alone gives it. Every split masks the same training items, so a user's ranking is the same
    for all of them: each user is scored and ranked once, not once per split (valid and test share most
    users: this halves an evaluation)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] <= 0:
        raise ValueError(f"ks must be positive integers, got {ks}")
    num_rows = max([_num_rows(train_mask), *(_num_rows(t) for t in splits.values())])
    truths = {name: _as_csr(t, num_rows) for name, t in splits.items()}
    mask = _as_csr(train_mask, num_rows)
    has = {name: np.diff(t[0]) > 0 for name, t in truths.items()}
    users = np.flatnonzero(np.logical_or.reduce([np.zeros(num_rows, bool), *has.values()]))
    totals: dict[str, dict[str, torch.Tensor]] = {name: {} for name in splits}

    with torch.no_grad():
        for start in range(0, len(users), batch_users):
            batch = users[start : start + batch_users]
            scores = score_fn(torch.from_numpy(batch))
            if ks[-1] > scores.shape[1]:
                raise ValueError(f"largest K ({ks[-1]}) exceeds the number of items ({scores.shape[1]})")
            device = scores.device
            rows, cols = (torch.from_numpy(a).to(device) for a in _rows(mask, batch))
            # index_put (not index_put_) leaves score_fn's tensor alone, in case it is a view of a cache.
            scores = scores.index_put((rows, cols), torch.tensor(float("-inf"), dtype=scores.dtype, device=device))
            top = torch.topk(scores, ks[-1], dim=1).indices
            for name, truth in truths.items():
                picked = np.flatnonzero(has[name][batch])
                if len(picked):
                    _add_batch(totals[name], truth, batch[picked], top[torch.from_numpy(picked).to(device)],
                               scores.shape[1], ks)

    names = [f"{metric}@{k}" for metric in METRICS for k in ks]
    counts = {name: max(int(h.sum()), 1) for name, h in has.items()}
    return {split: {n: float(t[n]) / counts[split] if n in t else 0.0 for n in names} for split, t in totals.items()}


def _add_batch(totals: dict[str, torch.Tensor], truth: CSR, users: np.ndarray, top: torch.Tensor, num_items: int,
               ks: Sequence[int]) -> None:
    """Add the metrics of `users` (their top-K item ids `top`) against `truth` to the running sums."""
    device = top.device
    relevant = torch.zeros((len(users), num_items), dtype=torch.bool, device=device)
    rows, cols = (torch.from_numpy(a).to(device) for a in _rows(truth, users))
    relevant[rows, cols] = True
    pos_len = torch.from_numpy(np.diff(truth[0])[users]).to(device, torch.float64)
    # Summed on the scores' device and read once at the end: no host round trip per batch.
    for name, values in _batch_metrics(relevant.gather(1, top), pos_len, ks).items():
        totals[name] = totals[name] + values.sum() if name in totals else values.sum()


def _batch_metrics(hits: torch.Tensor, pos_len: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per-user metrics from the hit matrix.

    Args:
        hits: [B, K_max] bool, hits[u, r] = the item ranked r+1 for user u is relevant.
        pos_len: [B] float64, number of relevant items per user (>= 1).

    Returns:
        "metric@K" -> [B] float64.
    """
    hits = hits.to(torch.float64)
    ranks = torch.arange(1, hits.shape[1] + 1, device=hits.device, dtype=torch.float64)
    cum_hits = hits.cumsum(1)
    discount = 1.0 / torch.log2(ranks + 1)
    dcg = (hits * discount).cumsum(1)
    ideal_dcg = discount.cumsum(0)  # ideal_dcg[n - 1]: all of the first n ranks relevant
    average_precision = (cum_hits / ranks * hits).cumsum(1)
    out = {}
    for k in ks:
        found = cum_hits[:, k - 1]
        capped = torch.clamp(pos_len, max=k)  # the most hits a list of K can hold
        out[f"recall@{k}"] = found / pos_len
        out[f"precision@{k}"] = found / k
        out[f"ndcg@{k}"] = dcg[:, k - 1] / ideal_dcg[capped.long() - 1]
        out[f"map@{k}"] = average_precision[:, k - 1] / capped
    return out
