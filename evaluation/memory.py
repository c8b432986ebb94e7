"""Pre-flight: will the dense item-item counts of a run fit in memory?

SceneRec's item statistics are sparse and bounded per item (``embeddings.itemstats``);
the item-kNN baseline still keeps a dense float32 co-occurrence matrix, ``4 n²`` bytes
for ``n`` items (0.55 GB at 12,101 items, 1.5 GB at 20,033, 37 GB at 100,000), and the
estimate can count SceneRec models that keep dense counts too (the model before the
sparse statistics: two matrices). The harness checks before it builds any of them, and
stops with a clear error rather than start what the machine cannot hold. There is no
fallback: a catalog too large for a dense model is not evaluated under that model's name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: float32
_BYTES = 4
GB = 1024**3


class MemoryLimitError(RuntimeError):
    """The dense counts of a run would not fit in the memory allowed."""


@dataclass(frozen=True)
class DenseEstimate:
    n_items: int
    #: How many of each are alive at once.
    scenerec_models: int
    knn_models: int

    @property
    def scenerec_bytes(self) -> int:
        """One SceneRec with dense counts: transitions ``(n + 1) x n``, co-occurrence
        ``n x n`` (the sparse statistics need no such estimate)."""
        n = self.n_items
        return _BYTES * ((n + 1) * n + n * n)

    @property
    def knn_bytes(self) -> int:
        return _BYTES * self.n_items * self.n_items

    @property
    def total_bytes(self) -> int:
        return self.scenerec_models * self.scenerec_bytes + self.knn_models * self.knn_bytes

    def describe(self) -> str:
        return (
            f"{self.n_items:,} items: {self.knn_bytes / GB:.2f} GB per item-kNN "
            f"(x{self.knn_models}) and {self.scenerec_bytes / GB:.2f} GB per dense SceneRec "
            f"(x{self.scenerec_models}), {self.total_bytes / GB:.2f} GB in all"
        )


def available_bytes() -> int:
    """``MemAvailable`` of ``/proc/meminfo`` (physical memory where it is missing)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_dense(estimate: DenseEstimate, limit_gb: float | None = None) -> dict[str, float]:
    """Raise :class:`MemoryLimitError` if ``estimate`` exceeds ``limit_gb`` (default: 80%
    of the memory available now); returns what was checked, for the run's record."""
    available = available_bytes()
    limit = 0.8 * available if limit_gb is None else limit_gb * GB
    if estimate.total_bytes > limit:
        rule = "80% of the available" if limit_gb is None else "--max-dense-gb"
        raise MemoryLimitError(
            f"the dense item-item counts for {estimate.describe()}, more than the "
            f"{limit / GB:.1f} GB allowed ({rule}; "
            f"{available / GB:.1f} GB available). Nothing was allocated. Skip the dense "
            "baseline (--no-knn) or evaluate a smaller catalog."
        )
    return {
        "n_items": estimate.n_items,
        "dense_gb": round(estimate.total_bytes / GB, 3),
        "limit_gb": round(limit / GB, 2),
        "available_gb": round(available / GB, 2),
    }
