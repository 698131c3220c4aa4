"""Serving files out of a finished stage (`ptmrec export`): the user and item representations whose dot
products are the scores, the item features the stage scores with (adapted ones for stage 2), all keyed by
the data's own ids, as Parquet, and an approximate-nearest-neighbour index over the items.

    <run uri>/<stage>/export/users.parquet   id, embedding
    <run uri>/<stage>/export/items.parquet   id, embedding, feature_<modality> for each modality
    <run uri>/<stage>/export/items.faiss     faiss HNSW index (inner product) over the item embeddings
    <run uri>/<stage>/export/export.json     what was written, and the index's recall@K against exact scoring

The index is checked before anything is called finished: its top-K for a sample of users is compared with
exact full scoring (recall@K, train items not excluded on either side), and export.json, written last, is
the marker that the folder is complete.
"""

from __future__ import annotations

import io
import json
import logging
import time

import numpy as np
import torch

from ptmrec.config import Config
from ptmrec.data.shards import load_manifest, read_ids
from ptmrec.data.stream import read_interactions
from ptmrec.stages.evaluate import load_stage_model
from ptmrec.storage import Storage
from ptmrec.uris import join

log = logging.getLogger(__name__)

HNSW_NEIGHBOURS = 32  # graph degree: recall above 0.95 at these sizes, build time linear in the catalogue
HNSW_SEARCH_DEPTH = 128  # efSearch: candidates kept while searching; higher is slower and more exact


def export_stage(cfg: Config, stage: str = "stage1", k: int = 20, check_users: int = 1000) -> dict:
    """Write the stage's serving files (module docstring); returns export.json's content."""
    start = time.perf_counter()
    storage = Storage(cfg.storage)
    manifest = load_manifest(storage, cfg.data.uri)
    ids = read_ids(storage, cfg.data.uri, manifest)
    inter = read_interactions(storage, cfg.data.uri)
    model = load_stage_model(cfg, stage, storage, inter)
    with torch.no_grad():
        users, items = (t.float().numpy() for t in model())
    features = {m: f.detach().float().numpy() for m, f in model.item_features().items()}
    out = join(cfg.run.uri, stage, "export")
    storage.delete(join(out, "export.json"))  # the folder is unfinished until it is written again
    storage.write_bytes(join(out, "users.parquet"), _parquet({"id": ids["users"], "embedding": users}))
    storage.write_bytes(join(out, "items.parquet"), _parquet({"id": ids["items"], "embedding": items,
                                                              **{f"feature_{m}": f for m, f in features.items()}}))
    index, build_s = _build_index(items)
    storage.write_bytes(join(out, "items.faiss"), _serialize(index))
    recall = index_recall(index, users, items, k, check_users, seed=cfg.run.seed)
    summary = {"stage": stage, "model": cfg.recommender.name, "users": len(users), "items": len(items),
               "dim": int(items.shape[1]), "features": {m: int(f.shape[1]) for m, f in features.items()},
               "index": {"type": f"HNSW{HNSW_NEIGHBOURS},IP", "ef_search": HNSW_SEARCH_DEPTH, "build_s": round(build_s, 2),
                         f"recall@{k}": round(recall, 4), "checked_users": min(check_users, len(users))},
               "files": ["users.parquet", "items.parquet", "items.faiss"], "wall_s": round(time.perf_counter() - start, 2)}
    storage.write_text(join(out, "export.json"), json.dumps(summary, indent=2) + "\n")
    log.info("export %s → %s: %d users, %d items, index recall@%d %.4f", stage, out, len(users), len(items), k, recall)
    return summary


def index_recall(index, users: np.ndarray, items: np.ndarray, k: int, sample: int, seed: int) -> float:
    """Mean over a sample of users of |index top-k ∩ exact top-k| / k, by inner product."""
    k = min(k, len(items))
    rows = np.random.default_rng(seed).choice(len(users), size=min(sample, len(users)), replace=False)
    queries = np.ascontiguousarray(users[rows])
    exact = np.argsort(-(queries @ items.T), axis=1)[:, :k]
    _, found = index.search(queries, k)
    return float(np.mean([len(set(e) & set(f)) / k for e, f in zip(exact.tolist(), found.tolist())]))


def _build_index(items: np.ndarray):
    import faiss

    start = time.perf_counter()
    index = faiss.IndexHNSWFlat(items.shape[1], HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = HNSW_SEARCH_DEPTH
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    return index, time.perf_counter() - start


def _serialize(index) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def load_index(data: bytes):
    """An index written by `export_stage`, from its bytes."""
    import faiss

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def _parquet(columns: dict) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {name: (pa.array(values) if isinstance(values, list)
                     else pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1]))
              for name, values in columns.items()}
    buf = io.BytesIO()
    pq.write_table(pa.table(arrays), buf)
    return buf.getvalue()
