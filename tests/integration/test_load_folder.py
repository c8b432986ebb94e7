"""`scenerec load --dataset DIR`: a folder of atomic files replayed into the real stack."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from scenerec.datasets import load_folder
from scenerec.publish import publish_dataset
from tests.integration.conftest import Bus, Services, get_json, wait_for

pytestmark = pytest.mark.integration


def _folder(root: Path, tag: str, scene: str) -> Path:
    """Three new items in ``scene``, two users (one follows the other), a comment, in order."""
    folder = root / "shop"
    folder.mkdir()
    (folder / "shop.item").write_text(
        "item_id:token\ttitle:token_seq\ttext:token_seq\tscenes:token_seq\n"
        f"{tag}-1\tRed running shoe\tLight trail shoe.\t{scene}\n"
        f"{tag}-2\tWool socks\tMerino, three pairs.\t{scene}\n"
        f"{tag}-3\tWater bottle\tSteel, 750 ml.\t{scene}\n",
        encoding="utf-8",
    )
    (folder / "shop.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\ttext:token_seq\n"
        f"{tag}-a\t{tag}-1\t880000000\n"
        f"{tag}-a\t{tag}-2\t880000060\tWarm and soft, fits well.\n"
        f"{tag}-b\t{tag}-1\t880000120\n",
        encoding="utf-8",
    )
    (folder / "shop.net").write_text(
        f"source:token\ttarget:token\n{tag}-b\t{tag}-a\n", encoding="utf-8"
    )
    return folder


async def test_a_folder_replays_catalog_social_and_events(
    services: Services, bus: Bus, tmp_path: Path
) -> None:
    tag = f"t{uuid.uuid4().hex[:6]}"
    # A scene the stack declares: events in any other go to the dead letters.
    scene = services.settings.scenes[0]
    data = load_folder(_folder(tmp_path, tag, scene))
    stats = await publish_dataset(services.settings, data, progress=False)
    assert (stats.items, stats.social, stats.clicks, stats.comments) == (3, 1, 2, 1)
    user = f"{tag}-b"
    # The follow re-ranks only b's global feed; b's click then re-ranks its scene's too.
    msgs = await bus.collect(
        "recommendations",
        lambda ms: any(m["user_id"] == user and scene in m["scenes"] for m in ms),
        timeout_s=60,
    )
    mine = [m for m in msgs if m["user_id"] == user]
    assert any(set(m["scenes"]) >= {"global", scene} for m in mine)
    await wait_for(
        lambda: get_json(f"{services.worker_url}/users/{user}/state")[1]["following"], 30
    )
    await wait_for(
        lambda: get_json(f"{services.worker_url}/users/{tag}-a/state")[1].get("n_events") == 2,
        30,
    )
    _, state = get_json(f"{services.worker_url}/users/{tag}-a/state")
    # The click and the comment (events.comment), in order.
    assert state["recent"] == [f"{tag}-1", f"{tag}-2"]
