"""The friends' items analysis: friends who had the target rank it first, strangers do not."""

from __future__ import annotations

from evaluation.data import Dataset, Event, Item, SocialEdge, Split
from evaluation.social import followed_by, friends_items


def _event(user: str, item: str) -> Event:
    return Event(user=user, item=item, scene="s", kind="click", timestamp=0.0)


def _world() -> Dataset:
    items = tuple(Item(id=f"i{k}", scenes=("s",), text="", title=f"i{k}") for k in range(6))
    # Everyone had i0 and i1 (popular); only "me"'s friends had i5, my test target.
    train = [_event(u, i) for u in ("me", "f1", "f2", "s1", "s2", "s3") for i in ("i0", "i1")]
    train += [_event("f1", "i5"), _event("f2", "i5"), _event("s1", "i2"), _event("s2", "i2")]
    train += [_event("s3", "i3")]
    social = (SocialEdge("me", "f1"), SocialEdge("me", "f2"), SocialEdge("f2", "s1"))
    split = Split(tuple(train), (), (_event("me", "i5"),))
    return Dataset("toy", items, split, social=social)


def test_a_user_follows_the_targets_of_their_edges() -> None:
    assert followed_by(_world())["me"] == {"f1", "f2"}


def test_friends_who_had_the_target_rank_it_first() -> None:
    ds = _world()
    out = friends_items(ds, ds.split.train, ds.split.test)
    assert out["test_users_with_friends"] == 1
    assert out["friends"]["ndcg@10"]["value"] == 1.0  # i5 alone has friends' counts
    assert out["test_targets_friends_had"] == 1.0
    # Strangers never had i5: it ties with the other unseen items they never had.
    assert out["strangers"]["ndcg@10"]["value"] < 1.0
    assert out["friends - strangers (ndcg@10)"]["delta"] > 0
