"""Results -> tables on the terminal, ``results/eval.json``, and the recommendation dump.

``eval.json`` is shaped ``{protocol: {system: {metric: value}}}`` with protocol keys
``frozen``, ``online`` and ``cold_start``; every metric ``m`` comes with ``m_lo`` and
``m_hi`` (its 95% bootstrap interval over users). Cold-start metrics are pooled over the
users' 1st-10th events, and per bucket as ``m[1st]``, ``m[2nd-3rd]``, ``m[4th-10th]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from evaluation.metrics import HIT, MRR, NDCG, RECALL, Estimate

PROTOCOL_KEYS = ("frozen", "online", "cold_start")
#: Every protocol key ``eval.json`` can hold (Protocol L: ``loo``, its cold items).
ALL_PROTOCOL_KEYS = (*PROTOCOL_KEYS, "loo", "loo_cold_items")
TITLES = {
    "frozen": "Protocol A: frozen after train, all {items:,} items ranked, {frozen_users:,} "
    "test users",
    "online": "Protocol B: prequential over the {online_events:,} test events (valid replayed "
    "first)",
    "cold_start": "Protocol C: users first seen after train, NDCG@10 / Hit@10 by their event",
    "loo": "Protocol L: leave-one-out, {loo_users:,} users, each target ranked among all "
    "{items:,} items",
    "loo_cold_items": "Protocol L, item cold start: the {cold_users:,} test targets whose item "
    "lost its train events",
}


def titles(name: str, results: Results, counts: Mapping[str, int]) -> dict[str, str]:
    """The tables' titles with the data set's name and its own counts."""
    sizes = dict(counts)
    for key, label in (
        ("frozen", "frozen_users"),
        ("online", "online_events"),
        ("loo", "loo_users"),
        ("loo_cold_items", "cold_users"),
    ):
        systems = results.get(key)
        if systems:
            est = next(iter(next(iter(systems.values())).estimates.values()))
            sizes[label] = est.n_events if key == "online" else est.n_users
    out: dict[str, str] = {}
    for key, title in TITLES.items():
        try:
            out[key] = f"{name}, {title.format(**sizes)}"
        except KeyError:
            out[key] = f"{name}, {title.split(',')[0]}"
    return out


@dataclass
class SystemResult:
    """One system on one protocol: metric estimates plus list statistics."""

    estimates: dict[str, Estimate]
    extra: dict[str, float] = field(default_factory=dict)
    #: Cold start only: bucket label -> estimates.
    buckets: dict[str, dict[str, Estimate]] = field(default_factory=dict)


Results = dict[str, dict[str, SystemResult]]


def to_json(results: Results) -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for protocol, systems in results.items():
        out[protocol] = {}
        for name, res in systems.items():
            row: dict[str, float] = {}
            _put(row, res.estimates, "")
            for label, est in res.buckets.items():
                _put(row, est, f"[{label}]")
            any_est = next(iter(res.estimates.values()), None)
            if any_est is not None:
                row["n_users"] = float(any_est.n_users)
                row["n_events"] = float(any_est.n_events)
            row.update(res.extra)
            out[protocol][name] = row
    return out


def _put(row: dict[str, float], estimates: Mapping[str, Estimate], suffix: str) -> None:
    for m, est in estimates.items():
        row[f"{m}{suffix}"] = round(est.mean, 6)
        row[f"{m}_lo{suffix}"] = round(est.low, 6)
        row[f"{m}_hi{suffix}"] = round(est.high, 6)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def print_tables(
    results: Results, console: Console | None = None, heads: Mapping[str, str] | None = None
) -> None:
    # Rich wraps at 80 columns when stdout is not a terminal; these tables need ~150.
    console = console or Console(width=max(Console().width, 160), soft_wrap=False)
    heads = heads or TITLES
    for protocol in ALL_PROTOCOL_KEYS:
        systems = results.get(protocol)
        if systems:
            console.print(_table(protocol, systems, heads.get(protocol, protocol)))


def _table(protocol: str, systems: Mapping[str, SystemResult], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("system")
    if protocol.startswith("loo"):
        return _loo_table(table, systems)
    if protocol == "cold_start":
        labels = list(next(iter(systems.values())).buckets)
        for label in labels:
            n = next(iter(systems.values())).buckets[label][NDCG].n_events
            table.add_column(f"{label} NDCG@10 (n={n})", justify="right")
            table.add_column(f"{label} Hit@10", justify="right")
        for name, res in systems.items():
            cells = []
            for label in labels:
                cells += [res.buckets[label][NDCG].fmt(), f"{res.buckets[label][HIT].mean:.4f}"]
            table.add_row(name, *cells)
        return table
    metrics = (HIT, NDCG, RECALL, MRR) if protocol == "frozen" else (HIT, NDCG, MRR)
    for m in metrics:
        table.add_column(m, justify="right")
    table.add_column("cov@10", justify="right")
    table.add_column("ILD", justify="right")
    for name, res in systems.items():
        table.add_row(
            name,
            *(res.estimates[m].fmt() for m in metrics),
            f"{res.extra.get('coverage@10', float('nan')):.3f}",
            f"{res.extra.get('diversity@10', float('nan')):.3f}",
        )
    return table


def _loo_table(table: Table, systems: Mapping[str, SystemResult]) -> Table:
    cols = ("hit@5", "ndcg@5", "hit@10", "ndcg@10", "mrr@10", "hit@20", "ndcg@20")
    for m in cols:
        table.add_column(m, justify="right")
    for name, res in systems.items():
        cells = [
            res.estimates[m].fmt() if m == "ndcg@10" else f"{res.estimates[m].mean:.4f}"
            for m in cols
        ]
        table.add_row(name, *cells)
    return table


def print_deltas(deltas: Mapping[str, Mapping[str, float]], console: Console | None = None) -> None:
    """Paired NDCG@10 differences (what text, social add), with their intervals."""
    console = console or Console(width=max(Console().width, 160), soft_wrap=False)
    table = Table(
        title="Paired NDCG@10 differences, same users (95% bootstrap)", title_justify="left"
    )
    table.add_column("difference")
    table.add_column("NDCG@10", justify="right")
    for label, d in deltas.items():
        table.add_row(label, _delta(d))
    console.print(table)


def print_chosen(meta: Mapping[str, Any], console: Console | None = None) -> None:
    """Which knobs valid chose for SceneRec, and the data set's own counts."""
    console = console or Console(width=max(Console().width, 160), soft_wrap=False)
    console.print(f"{meta.get('dataset')}: {meta.get('counts')}")
    tuned = meta.get("tuned", {}).get("scenerec") or {}
    for kind in ("frozen", "online"):
        cfg = tuned.get(kind)
        if cfg:
            console.print(f"  scenerec {kind}: {_knob_line(cfg)}")
    for name, row in (meta.get("scenerec") or {}).items():
        if isinstance(row, dict) and "chosen" in row:
            console.print(
                f"  {name} (loo, valid NDCG@10 {row['valid_ndcg@10']:.4f}): "
                f"{_knob_line(row['chosen'])}"
            )


def _knob_line(cfg: Mapping[str, Any]) -> str:
    blend = cfg.get("blend")
    weights = blend["weights"] if isinstance(blend, dict) else blend
    unit = "d" if cfg.get("clock_unit_s", 86400.0) == 86400.0 else " events"
    return (
        f"half-life {cfg['half_life_days']:g}{unit}, freshness {cfg['age_weight']:g}, "
        f"blend per tenure {weights}"
    )


def print_diversity(payload: Mapping[str, Any], console: Console | None = None) -> None:
    """The MMR knob: accuracy against coverage and intra-list diversity, per lambda."""
    console = console or Console(width=max(Console().width, 160), soft_wrap=False)
    for protocol, rows in payload.items():
        table = Table(
            title=f"MMR diversity knob, SceneRec on {TITLES[protocol].split(':')[0]} "
            "(lambda 1 = plain top-k)",
            title_justify="left",
        )
        for col in ("MMR lambda", NDCG, HIT, "cov@10", "ILD"):
            table.add_column(col, justify="right")
        for lam, row in rows.items():
            table.add_row(
                lam,
                f"{row[NDCG]:.4f} [{row[NDCG + '_lo']:.4f}, {row[NDCG + '_hi']:.4f}]",
                f"{row[HIT]:.4f}",
                f"{row['coverage@10']:.3f}",
                f"{row['diversity@10']:.3f}",
            )
        console.print(table)


def print_social(payload: Mapping[str, Any], console: Console | None = None) -> None:
    """The social experiment: systems with and without friends' influence."""
    console = console or Console(width=max(Console().width, 160), soft_wrap=False)
    for dataset, data in payload.items():
        if "meta" not in data:  # SceneRec's own social term (evaluation.social)
            _print_scenerec_social(console, dataset, data)
            continue
        meta = data["meta"]
        table = Table(
            title=f"Social on {dataset}: random 80/20 split of listening pairs, "
            f"{meta['test_users']} test users, all artists ranked (tuned on a valid slice "
            "of train)",
            title_justify="left",
        )
        for col in ("system", NDCG, HIT, "tuned on valid"):
            table.add_column(col, justify="right" if col != "system" else "left")
        for name, row in data["systems"].items():
            table.add_row(
                name,
                f"{row[NDCG]:.4f} [{row[NDCG + '_lo']:.4f}, {row[NDCG + '_hi']:.4f}]",
                f"{row[HIT]:.4f} [{row[HIT + '_lo']:.4f}, {row[HIT + '_hi']:.4f}]",
                row.get("tuned", ""),
            )
        d = data["social_minus_no_social"]
        table.add_row("social - no social (paired)", _delta(d[NDCG]), _delta(d[HIT]), "")
        console.print(table)


def _print_scenerec_social(console: Console, dataset: str, data: Mapping[str, Any]) -> None:
    table = Table(
        title=f"Social in SceneRec on {dataset} ({data['follow_edges']:,} follow edges): "
        "paired NDCG@10 difference, and what the followed users had",
        title_justify="left",
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in data.items():
        if isinstance(value, Mapping) and "delta" in value:
            table.add_row(key, _delta(value))
    for key, value in data.get("friends_items", {}).items():
        table.add_row(key, f"{value:g}")
    console.print(table)


PER_SCENE_TITLES = {
    "frozen": "Per-scene feeds, Protocol A (frozen): NDCG@10 per (user, scene), sparsest first",
    "online": "Per-scene feeds, Protocol B (online): NDCG@10 per test event, sparsest first",
}
FAMILY_LABELS = {
    "independent": "independent",
    "colearn": "co-learning",
    "worker": "worker today",
}


def print_per_scene(payload: Mapping[str, Any], console: Console | None = None) -> None:
    """One table per protocol from ``eval.json``'s ``per_scene`` part."""
    console = console or Console(width=max(Console().width, 160), soft_wrap=False)
    for protocol, data in payload.items():
        console.print(per_scene_table(protocol, data))


def per_scene_table(protocol: str, data: Mapping[str, Any]) -> Table:
    table = Table(title=PER_SCENE_TITLES.get(protocol, protocol), title_justify="left")
    table.add_column("scene")
    table.add_column("train events", justify="right")
    table.add_column("n", justify="right")
    for label in FAMILY_LABELS.values():
        table.add_column(label, justify="right")
    table.add_column("co-learning - independent", justify="right")
    scenes = [s for s in data if s not in ("all", "sparsest", "tuned", "valid_ndcg@10")]
    for scene in scenes:
        row = data[scene]
        fams = [f for f in FAMILY_LABELS if f in row]
        n = row[fams[0]]["n_events"] if fams else 0
        cells = [_ci(row.get(f)) for f in FAMILY_LABELS]
        d = row.get("colearn_minus_independent")
        delta = (
            "-" if d is None else f"{d['delta']:+.4f} [{d['delta_lo']:+.4f}, {d['delta_hi']:+.4f}]"
        )
        table.add_row(scene, str(row["train_events"]), str(n), *cells, delta)
    pooled = data.get("all", {})
    table.add_row("all scenes", "", "", *(_ci(pooled.get(f)) for f in FAMILY_LABELS), "")
    return table


def _delta(d: Mapping[str, float]) -> str:
    return f"{d['delta']:+.4f} [{d['delta_lo']:+.4f}, {d['delta_hi']:+.4f}]"


def _ci(est: Mapping[str, float] | None) -> str:
    if not est:
        return "-"
    return f"{est[NDCG]:.4f} [{est[NDCG + '_lo']:.4f}, {est[NDCG + '_hi']:.4f}]"


def dump_recs(fh: IO[str], lines: Iterable[Mapping[str, Any]]) -> int:
    """JSON lines: protocol, system, user, event index (or null), ranked item ids."""
    n = 0
    for line in lines:
        fh.write(json.dumps(line, separators=(",", ":")) + "\n")
        n += 1
    return n


def dump_line(
    protocol: str,
    system: str,
    user: str,
    items: Sequence[str],
    event: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "protocol": protocol,
        "system": system,
        "user": user,
        "event": event,
        "items": list(items),
        **extra,
    }
