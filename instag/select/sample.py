"""Selecting a subset: InsTag's complexity-first diverse sampling and two baselines.

``complexity``: order queries by number of tags, descending (stable, ties broken by a seeded
shuffle); take a query only if it brings at least one tag not yet covered; when a pass ends before
``n``, start a new pass over the rest with the covered set reset; stop at ``n`` or when a pass takes
nothing. ``diverse``: the same coverage rule over a seeded random order (no complexity order).
``random``: a seeded uniform sample.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

STRATEGIES = ("complexity", "diverse", "random")


def _coverage_passes(order: list[int], tag_lists: Sequence[Sequence[str]], n: int) -> list[int]:
    chosen: list[int] = []
    remaining = order
    while len(chosen) < n and remaining:
        covered: set[str] = set()
        rest: list[int] = []
        took = 0
        for k, i in enumerate(remaining):
            if len(chosen) >= n:
                rest.extend(remaining[k:])
                break
            tags = tag_lists[i]
            if any(t not in covered for t in tags):
                covered.update(tags)
                chosen.append(i)
                took += 1
            else:
                rest.append(i)
        if took == 0:
            break  # what is left brings no tag at all (empty tag lists)
        remaining = rest
    return chosen


def select_indices(tag_lists: Sequence[Sequence[str]], n: int, strategy: str = "complexity",
                   seed: int = 0) -> list[int]:
    """Indexes into ``tag_lists`` of the selected queries, in the order they were chosen."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = random.Random(seed)
    order = list(range(len(tag_lists)))
    rng.shuffle(order)
    if strategy == "random":
        return order[:n]
    if strategy == "complexity":
        order.sort(key=lambda i: -len(tag_lists[i]))  # stable: the shuffle breaks ties
    return _coverage_passes(order, tag_lists, n)


@dataclass
class SetStats:
    queries: int
    unique_tags: int
    avg_tags: float

    @classmethod
    def of(cls, tag_lists: Sequence[Sequence[str]]) -> SetStats:
        uniq = set().union(*map(set, tag_lists)) if tag_lists else set()
        n = len(tag_lists)
        return cls(n, len(uniq), sum(map(len, tag_lists)) / n if n else 0.0)
