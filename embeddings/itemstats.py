"""What clicks teach about items, as bounded sparse rows that any number of workers share.

Every click on ``j`` by a user whose recent items are ``h_1 .. h_m`` (most recent last)
and whose last distinct items are ``H`` turns into *deltas*, each addressed to one item's
row (:func:`click_deltas`):

* row ``j``: one more click (popularity, decayed with a half-life of event time; the
  first click's time, for freshness) and, when ``j`` is new to the user, one more user
  (``count``) and a co-occurrence with each of ``H``;
* row ``h_{m-d}`` for ``d < window``: a transition to ``j`` weighing ``step_decay ** d``;
  a user's first click goes to the start row (:data:`START`), whose weights decay with
  their own half-life ("what new users start with lately");
* row ``h`` for each ``h`` in ``H`` (``j`` new to the user): a co-occurrence with ``j``.

A row keeps its transitions and co-occurrences in two :class:`SparseRow`: at most
``2 * neighbours`` targets each; past that, the ``neighbours`` strongest stay (ties by
key, so the same deltas in the same order give the same row everywhere). So memory is
bounded per clicked item, not quadratic in the catalog.

Rows are keyed by integers: item rows in-process (the evaluation harness, tests), or
:func:`item_key` hashes of item ids between processes, where the stream's item-stats
stage (the ``items.deltas`` agent, ``streams/agents``) applies deltas re-keyed by item and
every worker reads the rows back (``embeddings.collaborative.Collaborative``). A delta
carries the position of the click it came from (source, offset); a row applies a source's
deltas only past the last offset it applied from that source, so a replayed click counts
once.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]

#: Key of the start row (what new users click first): no item row or :func:`item_key` is
#: negative.
START = -1
#: Delta kinds.
CLICK, TRANSITION, COOCCURRENCE, START_CLICK, NEW_USER = range(5)
#: Source of in-process deltas that are never replayed (no de-duplication needed).
NO_SOURCE = -1


def item_key(item_id: str) -> int:
    """A stable 63-bit key of an item id, the same in every process (never negative)."""
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass(frozen=True)
class StatsConfig:
    """How clicks are counted into rows."""

    #: Transitions: how many earlier items a click is credited to, and how fast the credit
    #: falls with distance.
    window: int = 5
    step_decay: float = 0.7
    #: Co-occurrence: a new item is counted with the user's last this many distinct items.
    cooc_history: int = 20
    #: Targets kept per row and kind (a row holds up to twice as many between prunings).
    neighbours: int = 200
    #: Popularity and the start row halve in weight this fast (event time); inf: never.
    half_life_s: float = 7 * 86_400.0
    start_half_life_s: float = 28 * 86_400.0

    def __post_init__(self) -> None:
        for name in ("window", "cooc_history", "neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("half_life_s", "start_half_life_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (inf: no decay), got {getattr(self, name)}")

    @property
    def rate(self) -> float:
        """Popularity's decay rate per second (0 without decay)."""
        return math.log(2.0) / self.half_life_s

    @property
    def start_rate(self) -> float:
        return math.log(2.0) / self.start_half_life_s


class SparseRow:
    """Integer keys with float weights in growable arrays, and a key -> slot index."""

    __slots__ = ("_slots", "keys", "n", "weights")

    def __init__(self, keys: IntArray | None = None, weights: FloatArray | None = None) -> None:
        self.keys: IntArray = np.zeros(0, np.int64) if keys is None else keys
        self.weights: FloatArray = np.zeros(0, np.float64) if weights is None else weights
        self.n = int(self.keys.shape[0])
        self._slots: dict[int, int] | None = None

    def __len__(self) -> int:
        return self.n

    def slots(self) -> dict[int, int]:
        """Key -> position in :attr:`keys` and :attr:`weights` (built on first use)."""
        if self._slots is None:
            self._slots = {k: i for i, k in enumerate(self.keys[: self.n].tolist())}
        return self._slots

    def new_slot(self, key: int) -> int:
        """Room for ``key`` (not held yet), at weight 0."""
        slot = self.n
        if slot == self.keys.shape[0]:
            cap = max(8, 2 * slot)
            keys = np.zeros(cap, np.int64)
            weights = np.zeros(cap, np.float64)
            keys[:slot] = self.keys[:slot]
            weights[:slot] = self.weights[:slot]
            self.keys, self.weights = keys, weights
        self.keys[slot] = key
        self.weights[slot] = 0.0
        self.slots()[key] = slot
        self.n += 1
        return slot

    def add(self, key: int, weight: float) -> None:
        slot = self.slots().get(key)
        if slot is None:
            slot = self.new_slot(key)
        self.weights[slot] += weight

    def items(self) -> tuple[IntArray, FloatArray]:
        """The keys and their weights, in the order keys arrived (views: do not modify)."""
        return self.keys[: self.n], self.weights[: self.n]

    def get(self, keys: Sequence[int]) -> FloatArray:
        """Each key's weight, 0 where absent."""
        slots, w = self.slots(), self.weights
        return np.array([w[s] if (s := slots.get(k)) is not None else 0.0 for k in keys])

    def prune(self, keep: int) -> None:
        """Keep the ``keep`` largest weights when more than twice as many are held."""
        if self.n <= 2 * keep:
            return
        keys, weights = self.items()
        order = np.lexsort((keys, -weights))[:keep]  # largest first, ties by key
        order.sort()  # the survivors keep their order of arrival
        self.keys, self.weights = keys[order].copy(), weights[order].copy()
        self.n = keep
        self._slots = None

    def scale(self, factor: float) -> None:
        self.weights[: self.n] *= factor


@dataclass
class StatsRow:
    """Everything the stream knows about one item (or the start row)."""

    #: ``log`` of the decayed click count, forward-decayed: ``log sum_k w_k e^(rate t_k)``,
    #: so rows need no rescaling as time passes; -inf before the first click.
    log_pop: float = -math.inf
    #: Latest event time applied (the start row decays its weights to it).
    ts: float = -math.inf
    first_click: float = math.nan
    #: Distinct users who clicked the item (the co-occurrence cosine's norm).
    count: float = 0.0
    trans: SparseRow = field(default_factory=SparseRow)
    cooc: SparseRow = field(default_factory=SparseRow)
    #: Source -> the last offset whose deltas this row applied (exactly-once).
    marks: dict[int, int] = field(default_factory=dict)


class DeltaBatch:
    """Deltas as columns: each is one change to the row of ``key``.

    ``source`` and ``offset`` say which click it came from (``NO_SOURCE``: in-process,
    never replayed); the deltas of one click share them.
    """

    __slots__ = ("key", "kind", "offset", "source", "target", "ts", "weight")

    def __init__(self) -> None:
        self.key: list[int] = []
        self.kind: list[int] = []
        self.target: list[int] = []
        self.weight: list[float] = []
        self.ts: list[float] = []
        self.source: list[int] = []
        self.offset: list[int] = []

    def __len__(self) -> int:
        return len(self.key)

    def append(
        self, key: int, kind: int, target: int, weight: float, ts: float, source: int, offset: int
    ) -> None:
        self.key.append(key)
        self.kind.append(kind)
        self.target.append(target)
        self.weight.append(weight)
        self.ts.append(ts)
        self.source.append(source)
        self.offset.append(offset)

    def groups(self) -> dict[int, list[int]]:
        """Positions of the deltas of each key, in order."""
        out: dict[int, list[int]] = {}
        for i, key in enumerate(self.key):
            out.setdefault(key, []).append(i)
        return out

    def select(self, positions: Sequence[int]) -> DeltaBatch:
        out = DeltaBatch()
        for name in self.__slots__:
            column = getattr(self, name)
            setattr(out, name, [column[i] for i in positions])
        return out


def click_deltas(
    out: DeltaBatch,
    item: int,
    ts: float,
    recent: Sequence[int],
    new_distinct: Sequence[int] | None,
    config: StatsConfig,
    source: int = NO_SOURCE,
    offset: int = 0,
) -> None:
    """Append the deltas of one click on ``item`` to ``out``.

    ``recent``: the user's recent items before it, oldest first (repeats included);
    ``new_distinct``: their last distinct items when ``item`` is new to them, else None
    (co-occurrence counts an item once per user).
    """
    add = out.append
    add(item, CLICK, 0, 1.0, ts, source, offset)
    if not recent:
        add(START, START_CLICK, item, 1.0, ts, source, offset)
    else:
        step = config.step_decay
        for distance, prev in enumerate(reversed(recent[-config.window :])):
            add(prev, TRANSITION, item, step**distance, ts, source, offset)
    if new_distinct is not None:
        add(item, NEW_USER, 0, 1.0, ts, source, offset)
        for h in new_distinct[-config.cooc_history :]:
            add(item, COOCCURRENCE, h, 1.0, ts, source, offset)
            add(h, COOCCURRENCE, item, 1.0, ts, source, offset)


def apply(row: StatsRow, deltas: DeltaBatch, positions: Sequence[int], config: StatsConfig) -> bool:
    """Apply the deltas at ``positions`` (all addressed to this row, from one message)
    in order; False if every one was a replay.

    A source's deltas apply only past the last offset the row applied from it before this
    message; the deltas of one click share its offset and come in one message, so they
    all apply or none. A replay of the click comes in another message, and is skipped.
    """
    kinds, targets, weights, times = deltas.kind, deltas.target, deltas.weight, deltas.ts
    sources, offsets = deltas.source, deltas.offset
    marks = row.marks
    before = dict(marks) if marks else None
    changed = False
    rate = config.rate
    tr, co = row.trans, row.cooc
    for i in positions:
        source = sources[i]
        if source != NO_SOURCE:
            offset = offsets[i]
            if before is not None and offset <= before.get(source, -1):
                continue
            if offset > marks.get(source, -1):
                marks[source] = offset
        changed = True
        kind = kinds[i]
        if kind in (TRANSITION, COOCCURRENCE):
            part = tr if kind == TRANSITION else co
            t = targets[i]
            slot = part.slots().get(t)
            if slot is None:
                slot = part.new_slot(t)
            part.weights[slot] += weights[i]
        elif kind == CLICK:
            ts = times[i]
            row.log_pop = _logaddexp(row.log_pop, math.log(weights[i]) + rate * ts)
            if not row.first_click <= ts:  # NaN (no click yet) compares False
                row.first_click = ts
            if ts > row.ts:
                row.ts = ts
        elif kind == NEW_USER:
            row.count += weights[i]
        else:
            _start_click(row, targets[i], weights[i], times[i], config)
    if changed:
        row.trans.prune(config.neighbours)
        row.cooc.prune(config.neighbours)
    return changed


def _start_click(row: StatsRow, target: int, weight: float, ts: float, config: StatsConfig) -> None:
    """A first click: the start row's weights stay as of its latest one, older ones decayed."""
    if ts > row.ts:
        if row.ts > -math.inf:
            row.trans.scale(math.exp(-config.start_rate * (ts - row.ts)))
        row.ts = ts
    row.trans.add(target, weight * math.exp(-config.start_rate * (row.ts - ts)))


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == -math.inf:
        return a
    return a + math.log1p(math.exp(b - a))


# --- wire formats -------------------------------------------------------------------------
_ROW_MAGIC = b"IS1"
_ROW_HEAD = struct.Struct("<4d3I")
_DELTA_MAGIC = b"ID1"
_DELTA_DTYPE = np.dtype(
    [
        ("key", "<i8"),
        ("kind", "<i1"),
        ("target", "<i8"),
        ("weight", "<f8"),
        ("ts", "<f8"),
        ("source", "<i4"),
        ("offset", "<i8"),
    ]
)


def dumps_row(row: StatsRow) -> bytes:
    tk, tw = row.trans.items()
    ck, cw = row.cooc.items()
    marks = np.array(sorted(row.marks.items()), dtype="<i8").reshape(-1, 2)
    head = _ROW_HEAD.pack(
        row.log_pop, row.ts, row.first_click, row.count, len(tk), len(ck), len(marks)
    )
    return b"".join(
        (
            _ROW_MAGIC,
            head,
            tk.astype("<i8").tobytes(),
            tw.astype("<f8").tobytes(),
            ck.astype("<i8").tobytes(),
            cw.astype("<f8").tobytes(),
            marks.tobytes(),
        )
    )


def loads_row(raw: bytes) -> StatsRow:
    if raw[:3] != _ROW_MAGIC:
        raise ValueError("not a SceneRec item-stats row (bad magic)")
    log_pop, ts, first, count, nt, nc, nm = _ROW_HEAD.unpack_from(raw, 3)
    at = 3 + _ROW_HEAD.size

    def take(dtype: str, n: int) -> npt.NDArray[np.generic]:
        nonlocal at
        out = np.frombuffer(raw, dtype=dtype, count=n, offset=at)
        at += out.nbytes
        return out

    trans = SparseRow(take("<i8", nt).astype(np.int64), take("<f8", nt).astype(np.float64))
    cooc = SparseRow(take("<i8", nc).astype(np.int64), take("<f8", nc).astype(np.float64))
    marks = take("<i8", 2 * nm).reshape(-1, 2)
    return StatsRow(
        log_pop,
        ts,
        first,
        count,
        trans,
        cooc,
        {int(s): int(o) for s, o in marks.tolist()},
    )


def dumps_deltas(deltas: DeltaBatch) -> bytes:
    arr = np.zeros(len(deltas), _DELTA_DTYPE)
    for name in _DELTA_DTYPE.names or ():
        arr[name] = getattr(deltas, name)
    return _DELTA_MAGIC + arr.tobytes()


def loads_deltas(raw: bytes) -> DeltaBatch:
    if raw[:3] != _DELTA_MAGIC or (len(raw) - 3) % _DELTA_DTYPE.itemsize:
        raise ValueError("not a SceneRec item-stats delta batch")
    arr = np.frombuffer(raw, dtype=_DELTA_DTYPE, offset=3)
    out = DeltaBatch()
    for name in _DELTA_DTYPE.names or ():
        setattr(out, name, arr[name].tolist())
    return out
