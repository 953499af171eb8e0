"""Split a selection of tuples into N shards (e.g. the tasks of a Slurm job array), balanced by image count.

The partition depends only on the tuple names and their image counts, never on list order, the
machine or the time: every shard computes the same one, so N shards convert each tuple exactly once.
"""

from __future__ import annotations

import argparse
import heapq
import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 ≤ index < count), written `index/count`."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'3/8' → Shard(3, 8); the index counts from 0, like `#SBATCH --array=0-7`."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected I/N, e.g. 0/8 (shard I of N, I from 0), got {text!r}")
    index, count = int(m[1]), int(m[2])
    if count < 1 or index >= count:
        raise argparse.ArgumentTypeError(f"shard index must be 0 to N-1 for I/N, got {text!r}")
    return Shard(index, count)


def partition(weights: Sequence[tuple[str, int]], count: int) -> list[list[str]]:
    """Names grouped into `count` shards of near-equal total weight (images), each in the order given.

    Greedy longest-first: tuples by decreasing image count (then by name), each to the shard with
    the fewest images so far (then the lowest index). Equal weights become a round robin by name.
    """
    shard_of = assignment(weights, count)
    shards: list[list[str]] = [[] for _ in range(count)]
    for name, _ in weights:
        shards[shard_of[name]].append(name)
    return shards


def assignment(weights: Sequence[tuple[str, int]], count: int) -> dict[str, int]:
    """Name → the index of its shard (see `partition`)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    heap = [(0, i) for i in range(count)]
    shard_of = {}
    for name, weight in sorted(weights, key=lambda nw: (-nw[1], nw[0])):
        load, i = heapq.heappop(heap)
        shard_of[name] = i
        heapq.heappush(heap, (load + weight, i))
    return shard_of


def describe_shards(weights: Sequence[tuple[str, int]], count: int, listing: bool = False) -> str:
    """What `fsconvert plan --shards N` prints: tuples and images per shard (and each tuple with `listing`)."""
    images = dict(weights)
    shards = partition(weights, count)
    loads = [sum(images[n] for n in s) for s in shards]
    mean = sum(loads) / count
    lines = [f"{len(weights)} tuples, {sum(loads)} images in {count} shard{'s' if count > 1 else ''}; "
             f"largest shard {max(loads) / mean if mean else 1:.3f}× the mean"]
    lines += [f"shard {Shard(i, count)}: {len(s)} tuple{'' if len(s) == 1 else 's'}, {loads[i]} images"
              for i, s in enumerate(shards)]
    if listing:
        lines += [f"{i}\t{name}" for i, s in enumerate(shards) for name in s]
    return "\n".join(lines)
