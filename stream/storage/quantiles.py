"""Exact order statistics over sorted sets split across state shards (the RFM cut points).

``select`` finds, for each request, the score at a 0-based rank of the *union* of one sorted
set per shard, exactly (the same answer one sorted set holding every member would give), with a
few pipelined round trips and without reading the sets whole:

* every shard keeps a window ``[lo, hi)`` of positions that may still hold the answer (all of it
  at first); members before ``lo`` are known to score below the answer, from ``hi`` on above;
* while the windows hold more than ``FETCH_ALL`` members, each shard's member at the rank
  proportional to the target is read, the weighted median of those picks is the pivot, and the
  members scoring below / at most the pivot are counted (``ZCOUNT``) in the shards whose window
  is not empty. The pivot is the answer when the target rank falls among its ties; otherwise
  every window is cut at the pivot (at least a quarter of what is left goes);
* once few enough remain, the windows are read and merged, and the answer picked.

A refresh asks nearly the ranks of the one before, so a request may come with a *guess* (the
previous answer): one round counts at the guess, which settles the answer when the rank falls
among the guess's ties and otherwise keeps only the windows' part on the answer's side; a second
round reads each shard's few members next to the guess on that side, and the answer is settled
when those reads provably hold every member between the guess and it; a shard whose read stops
short of it reads on (twice as many, up to ``GUESS_READS`` rounds: ``_Near``). The pivot rounds go
on from the narrowed windows only for an answer far from its guess.

Each round's probes of a shard go in one call (``rank_probe.lua``), so a round costs one command
per shard whatever the number of requests.

Shards hold random samples of the population (users are placed by a hash), so the proportional
pick lands next to the answer and one or two rounds usually suffice.

The sets may change while a selection runs (batches rank their users between its round trips).
Every probe also returns its sets' sizes: when more members than ``DRIFT_SHARE`` of them were
added or removed since the selection began, ``SetsChanged`` is raised (so do a short read and
windows that stop narrowing) and the caller starts over from fresh sizes (``Store.refresh_rfm``).
Below that share the answer may be off by the members that changed (a member re-ranked in between
too); the next refresh reads the sets as they are then, and with no writes the answer is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from stream.storage.client import run_scripts

FETCH_ALL = 4096  # read the remaining windows whole once they hold at most this many members
# Members read next to a guess in a shard beyond twice its expected share of the ranks between the
# guess and the answer: a shard then rarely holds more of them than it returned.
GUESS_MARGIN = 3
GUESS_READS = 3  # rounds of reads next to the guesses (a shard short of the answer reads on)
# Members ranked or dropped while a selection runs that it absorbs (a share of all members): up to
# that, an answer is off by at most as many ranks; beyond, it starts over (``SetsChanged``).
DRIFT_SHARE = 0.01


class SetsChanged(RuntimeError):
    """The sets changed under a running selection more than it absorbs (``DRIFT_SHARE``), or so
    that its windows no longer hold the answer: start over from fresh sizes."""


@dataclass
class Request:
    keys: Sequence[str]  # one sorted set per shard
    rank: int  # 0-based rank in the union
    lo: list[int] = field(default_factory=list)
    hi: list[int] = field(default_factory=list)
    answer: float | None = None


def score_text(score: float) -> str:
    """A score as Redis prints it (integers without a fraction; else the shortest exact form)."""
    return str(int(score)) if score.is_integer() and abs(score) < 1e17 else repr(score)


class _Probes:
    """One round's probes, grouped per shard into one ``rank_probe`` call each (``keys[i]`` of
    every request is shard i's set: they share its cluster slot). The same probe asked twice is
    sent once (cut points share windows)."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes  # key -> members when the selection began
        self.tolerance = int(DRIFT_SHARE * sum(sizes.values()))
        self.keys: dict[int, list[str]] = {}
        self.args: dict[int, list[Any]] = {}
        self.asked: dict[tuple[str, str, Any, Any], int] = {}  # (set, kind, a, b) -> its reply's index
        self.replies: dict[int, list[Any]] = {}

    def add(self, shard: int, key: str, kind: str, a: Any, b: Any = "") -> tuple[int, int]:
        """Ask shard ``shard``'s set ``key`` a probe (rank_probe.lua's kinds); returns its reply's
        address for ``reply``."""
        probe = (key, kind, a, b)
        if probe not in self.asked:
            keys, args = self.keys.setdefault(shard, []), self.args.setdefault(shard, [])
            if key not in keys:
                keys.append(key)
            self.asked[probe] = len(args) // 4
            args.extend((kind, keys.index(key) + 1, a, b))
        return shard, self.asked[probe]

    async def run(self, client: Any) -> None:
        shards = list(self.args)
        calls = [("rank_probe", self.keys[s], self.args[s]) for s in shards]
        self.replies = dict(zip(shards, await run_scripts(client, calls), strict=True))
        drift = sum(
            abs(int(card) - self.sizes[key])
            for shard, (cards, *_) in self.replies.items()
            for key, card in zip(self.keys[shard], cards, strict=True)
        )
        if drift > self.tolerance:
            raise SetsChanged(f"{drift} members ranked or dropped since the selection began")

    def reply(self, address: tuple[int, int]) -> Any:
        return self.replies[address[0]][address[1] + 1]


async def select(
    client: Any,
    requests: Sequence[Request],
    sizes: Sequence[Sequence[int]],
    known: dict[str, list[float]] | None = None,
    guesses: Sequence[float | None] | None = None,
) -> list[float]:
    """The score at ``request.rank`` of each request; ``sizes[r][i]`` is ZCARD of request r's shard i.

    ``known``, when given, holds sets whose scores the caller already read whole (key -> scores in
    order, as consistent with ``sizes``): they are not read again; and it receives every set this
    call reads whole, so the caller can use them without reading them again either. ``guesses[r]``
    (None: none) is a score near request r's answer, such as the previous refresh's: any value
    gives the same answer, a near one in fewer round trips."""
    known = {} if known is None else known
    size_of_set = {
        key: n for r, counts in zip(requests, sizes, strict=True) for key, n in zip(r.keys, counts, strict=True)
    }
    for request, counts in zip(requests, sizes, strict=True):
        request.lo = [0] * len(counts)
        request.hi = list(counts)
        if not 0 <= request.rank < sum(counts):
            raise ValueError(f"rank {request.rank} outside 0..{sum(counts) - 1}")
    guessed = [
        (r, guess)
        for r, guess in zip(requests, guesses or [None] * len(requests), strict=True)
        if guess is not None and _left(r) > FETCH_ALL  # else the first round reads the windows whole
    ]
    if guessed:
        await _from_guesses(client, guessed, size_of_set)
    while pending := [r for r in requests if r.answer is None]:
        probes = _Probes(size_of_set)
        # (request, whole window?, shard, (set, first, last), reply address: None for a known set)
        reads: list[tuple[Request, bool, int, tuple[str, int, int], tuple[int, int] | None]] = []
        for r in pending:
            left = _left(r)
            whole = left <= FETCH_ALL
            target = r.rank - sum(r.lo)
            for i, (lo, hi) in enumerate(zip(r.lo, r.hi, strict=True)):
                if hi > lo:
                    start = lo if whole else lo + min(hi - lo - 1, target * (hi - lo) // left)
                    span = (r.keys[i], start, hi - 1 if whole else start)
                    address = None if span[0] in known else probes.add(i, span[0], "z", span[1], span[2])
                    reads.append((r, whole, i, span, address))
        await probes.run(client)
        picks: dict[int, list[tuple[float, int]]] = {}
        merged: dict[int, list[float]] = {}
        for r, whole, i, (key, first, last), address in reads:
            if address is None:  # known: the same slice the read would have returned
                scores = known[key][first : last + 1]
            else:
                scores = [float(score) for score in probes.reply(address)]
                if len(scores) < last + 1 - first:
                    raise SetsChanged(f"{key} holds fewer than {last + 1} members")
                if whole and first == 0 and last + 1 == size_of_set[key]:
                    known[key] = scores
            if whole:
                merged.setdefault(id(r), []).extend(scores)
            else:
                picks.setdefault(id(r), []).append((scores[0], r.hi[i] - r.lo[i]))
        counting: list[tuple[Request, float]] = []
        for r in pending:
            at = r.rank - sum(r.lo)
            if id(r) in merged and 0 <= at < len(merged[id(r)]):
                r.answer = sorted(merged[id(r)])[at]
            elif id(r) in picks and id(r) not in merged:
                counting.append((r, _weighted_median(picks[id(r)])))
            else:  # the counts of a set that grew since its size was read cut past the answer
                raise SetsChanged(f"rank {r.rank} of {r.keys[0]}... left every window")
        if counting:
            await _cut(client, counting, size_of_set)
    return [r.answer for r in requests if r.answer is not None]


async def _from_guesses(client: Any, guessed: list[tuple[Request, float]], sizes: dict[str, int]) -> None:
    """Settle or narrow each request from its guess (see the module docstring); the requests left
    unsettled keep their narrowed windows for the pivot rounds."""
    counted = await _count_at(client, guessed, sizes)
    near: list[_Near] = []
    for r, guess in guessed:
        lt, le = _narrow(r, counted[id(r)], guess)
        if r.answer is None:
            above = r.rank >= le
            near.append(_Near(r, above, r.rank - le if above else lt - 1 - r.rank))
    for n in near:  # each shard's expected share of the ranks between guess and answer, doubled
        left = _left(n.r)
        n.wanted = {
            i: -(-2 * (n.depth + 1) * (hi - lo) // left) + GUESS_MARGIN
            for i, (lo, hi) in enumerate(zip(n.r.lo, n.r.hi, strict=True))
            if hi > lo
        }
    for _ in range(GUESS_READS):
        near = [n for n in near if n.wanted and sum(map(len, n.read.values())) + sum(n.wanted.values()) <= FETCH_ALL]
        if not near:
            return  # far from their guesses: the pivot rounds find them
        probes = _Probes(sizes)
        asked = [
            (n, i, count, probes.add(i, n.r.keys[i], "z", *n.span(i, count)))
            for n in near
            for i, count in n.wanted.items()
        ]
        await probes.run(client)
        for n, i, count, address in asked:
            scores = [float(score) for score in probes.reply(address)]
            if len(scores) < min(count, n.unread(i)):
                raise SetsChanged(f"{n.r.keys[i]} holds fewer members than counted")
            got = n.read.setdefault(i, [])
            n.read[i] = got + scores if n.above else scores + got
        for n in near:
            n.settle()


@dataclass
class _Near:
    """A request whose answer lies ``depth`` ranks from its guess, on one side (``above``): every
    shard's members next to the guess on that side are read (``read``, in order) until they
    provably hold the answer: the depth-th of their union counted from the guess, when no shard
    with members left unread stops short of it."""

    r: Request
    above: bool
    depth: int
    read: dict[int, list[float]] = field(default_factory=dict)  # shard -> scores read, in order
    wanted: dict[int, int] = field(default_factory=dict)  # shard -> members to read next

    def unread(self, i: int) -> int:
        return self.r.hi[i] - self.r.lo[i] - len(self.read.get(i, ()))

    def span(self, i: int, count: int) -> tuple[int, int]:
        """Positions of shard i's next ``count`` members away from the guess."""
        got = len(self.read.get(i, ()))
        if self.above:
            first = self.r.lo[i] + got
            return first, min(first + count, self.r.hi[i]) - 1
        last = self.r.hi[i] - got - 1
        return max(last - count + 1, self.r.lo[i]), last

    def settle(self) -> None:
        """Settle the answer, or name the shards to read further (``wanted``)."""
        merged = sorted((x for scores in self.read.values() for x in scores), reverse=not self.above)
        open_shards = [i for i in self.read if self.unread(i) > 0]
        if self.depth >= len(merged):
            short = open_shards
        else:
            candidate = merged[self.depth]  # a shard is short when its farthest read is before it
            short = [
                i for i in open_shards if (self.read[i][-1] < candidate if self.above else self.read[i][0] > candidate)
            ]
            if not short:
                self.r.answer = candidate
        self.wanted = {i: 2 * len(self.read[i]) for i in short}


async def _count_at(
    client: Any, scored: list[tuple[Request, float]], sizes: dict[str, int]
) -> dict[int, dict[int, tuple[int, int]]]:
    """id(request) -> shard -> (members below, members at most) the request's score, in one round,
    for the shards whose window is not empty (an empty window's counts are known: everything
    before lo is below)."""
    probes = _Probes(sizes)
    asked: list[tuple[Request, int, tuple[int, int]]] = []
    for r, score in scored:
        text = score_text(score)
        for i, (lo, hi) in enumerate(zip(r.lo, r.hi, strict=True)):
            if hi > lo:
                asked.append((r, i, probes.add(i, r.keys[i], "c", text)))
    await probes.run(client)
    counted: dict[int, dict[int, tuple[int, int]]] = {id(r): {} for r, _ in scored}
    for r, i, address in asked:
        n_lt, n_le = probes.reply(address)
        counted[id(r)][i] = (int(n_lt), int(n_le))
    return counted


def _narrow(r: Request, counts: dict[int, tuple[int, int]], score: float) -> tuple[int, int]:
    """Settle ``r`` at ``score`` when its rank falls among the score's ties, else cut its windows
    at it (``counts``: shard -> members below / at most it, from ``_count_at``); returns the
    union's (members below, members at most) the score."""
    lt = sum(counts[i][0] if i in counts else r.lo[i] for i in range(len(r.lo)))
    le = sum(counts[i][1] if i in counts else r.lo[i] for i in range(len(r.lo)))
    if lt <= r.rank < le:
        r.answer = score
    elif r.rank < lt:
        for i, (n_lt, _) in counts.items():
            r.hi[i] = min(r.hi[i], n_lt)
    else:
        for i, (_, n_le) in counts.items():
            r.lo[i] = max(r.lo[i], n_le)
    return lt, le


def _left(r: Request) -> int:
    return sum(h - lo for lo, h in zip(r.lo, r.hi, strict=True))


def _weighted_median(picks: list[tuple[float, int]]) -> float:
    picks.sort()
    half, seen = sum(w for _, w in picks) / 2, 0
    for score, weight in picks:
        seen += weight
        if seen >= half:
            return score
    return picks[-1][0]


async def _cut(client: Any, counting: list[tuple[Request, float]], sizes: dict[str, int]) -> None:
    """Count below / at most each pivot and narrow the windows (or settle the answer)."""
    below = await _count_at(client, counting, sizes)
    for r, pivot in counting:
        windows = (list(r.lo), list(r.hi))
        _narrow(r, below[id(r)], pivot)
        if r.answer is None and (r.lo, r.hi) == windows:
            # counts past the windows (a set grew since its size was read) cut nothing: the same
            # pivot would come back in every round
            raise SetsChanged(f"rank {r.rank} of {r.keys[0]}...: the windows no longer narrow")
