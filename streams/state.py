"""Binary codec of :class:`UserState` for the Faust table and its changelog topic.

JSON lists of floats would make every changelog record ~10x larger and slower to parse,
so vectors travel as raw float32 bytes after a small JSON header:
``b"SR1" + u32 header length + header JSON + vector bytes``. Vector names are the scenes,
``@global``, ``@profile`` and ``@by:<user>`` for the users that pulled this one.
"""

from __future__ import annotations

import struct
from collections import deque

import numpy as np
import orjson

from embeddings import user_model
from embeddings.user_model import UserState
from embeddings.vectors import Vector

_MAGIC = b"SR1"
_LEN = struct.Struct("<I")
_BY = "@by:"


def dumps(state: UserState) -> bytes:
    names: list[str] = []
    blobs: list[bytes] = []

    def put(name: str, vec: Vector | None) -> None:
        if vec is not None:
            names.append(name)
            blobs.append(np.asarray(vec, dtype="<f4").tobytes())

    put("@global", state.global_vec)
    put("@profile", state.profile_vec)
    for scene, vec in state.scene_vecs.items():
        put(scene, vec)
    for user, vec in state.pulled_by.items():
        put(_BY + user, vec)
    dim = len(blobs[0]) // 4 if blobs else 0
    header = orjson.dumps(
        {
            "dim": dim,
            "vectors": names,
            "scene_counts": state.scene_counts,
            "n_events": state.n_events,
            "recent": list(state.recent),
            "seen": list(state.seen),
            "applied": list(state.applied),
            "following": list(state.following),
            "last_event_id": state.last_event_id,
            "ranked_at": state.ranked_at,
        }
    )
    return _MAGIC + _LEN.pack(len(header)) + header + b"".join(blobs)


def loads(raw: bytes) -> UserState:
    if raw[:3] != _MAGIC:
        raise ValueError("not a SceneRec user state (bad magic)")
    (hlen,) = _LEN.unpack_from(raw, 3)
    start = 3 + _LEN.size
    header = orjson.loads(raw[start : start + hlen])
    dim: int = header["dim"]
    body = np.frombuffer(raw, dtype="<f4", offset=start + hlen).astype(np.float32)
    vecs = {name: body[i * dim : (i + 1) * dim] for i, name in enumerate(header["vectors"])}
    pulled_by = {n[len(_BY) :]: vecs.pop(n) for n in [n for n in vecs if n.startswith(_BY)]}
    return UserState(
        global_vec=vecs.pop("@global", None),
        profile_vec=vecs.pop("@profile", None),
        scene_vecs=vecs,
        scene_counts=dict(header["scene_counts"]),
        n_events=header["n_events"],
        recent=deque(header["recent"], maxlen=user_model.RECENT_ITEMS),
        seen=dict.fromkeys(header["seen"]),
        applied=deque(header["applied"], maxlen=user_model.APPLIED_EVENTS),
        following=dict.fromkeys(header["following"]),
        pulled_by=pulled_by,
        last_event_id=header["last_event_id"],
        ranked_at=dict(header.get("ranked_at", {})),
    )
