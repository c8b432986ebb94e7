"""The vector store's nearest-item search as the ranking's candidate source."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from embeddings.blended import Feed
from embeddings.ranking import ItemIndex
from embeddings.vectors import Vector
from vectorstore.base import VectorStore


@dataclass(frozen=True)
class StoreNearest:
    """:class:`embeddings.blended.NearestItems` from the store's ``items`` (Qdrant's HNSW
    index, one batch of queries per call), as rows of the worker's item index."""

    store: VectorStore
    index: ItemIndex

    def nearest(
        self, queries: Sequence[Vector], scenes: Sequence[Feed], k: int
    ) -> list[npt.NDArray[np.intp]]:
        found = self.store.search_many(list(queries), k, list(scenes))
        row_of = self.index.row_of
        return [
            np.fromiter((r for h in hits if (r := row_of(h.item_id)) is not None), dtype=np.intp)
            for hits in found
        ]
