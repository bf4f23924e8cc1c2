"""Identity resolution of one batch: who each event belongs to, and which merges it makes.

``stream.identity`` owns what merging two profiles means (``merge_into``) and when a merge is
refused (``refusal``), for any two states. This module applies that to a batch of events, in the
batch's order: events with a blocked identifier are refused outright (``refuse_blocked``), the
batch's links (an event carrying both ids) are collected and checked against the stored aliases
(``resolve``, first link of an anonymous id wins), and, once the states are loaded, the accepted
links are folded (``merge``). Pure: the caller reads the aliases and the states.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from stream.core.intake import Valid
from stream.core.writes import LoadedUser, UserWrite
from stream.identity.merge import IdentityPolicy, Refusal, anon_subject, merge_into, refusal
from stream.tagging.state import MergedId, UserState

log = logging.getLogger(__name__)


@dataclass
class Resolution:
    """Who each event of a batch belongs to, and the links (anonymous -> user) it carries."""

    aliases: dict[str, str]  # anonymous subject -> user, merged before this batch
    links: dict[str, tuple[str, float, int]]  # anonymous subject -> (user, link time, id(link event)), unmerged
    refused: list[tuple[int, Refusal]]  # (id(link event), why)
    owners: list[str] = field(default_factory=list)  # events' owners before this batch's merges
    redirect: dict[str, str] = field(default_factory=dict)  # anonymous subject -> user, merged in this batch
    # anonymous subject -> user: linked again by an event of this batch although an alias exists;
    # the store fences a merge across state shards (alias first), so the anonymous state may still
    # be there (a crash or a conflict after the fence): ``merge`` completes it
    pending: dict[str, tuple[str, float]] = field(default_factory=dict)  # -> (user, link time)
    # anonymous subject -> (user, event time): merged (an alias exists), and an event of this batch
    # carries only the anonymous id. A fenced merge's anonymous state still holds the events it
    # applied; when they come again (the worker died after the fence) they resolve to the user,
    # so ``merge`` folds that state first and they count as redelivered, not twice. None of them
    # is in ``pending`` (a link of the batch completes its merge).
    leftovers: dict[str, tuple[str, float]] = field(default_factory=dict)

    @property
    def subjects(self) -> list[str]:
        """Everyone to load: the events' owners, both sides of every candidate link, and the
        merged anonymous ids a fence may have left a state for (``pending``, ``leftovers``)."""
        linked = [u for u, _, _ in self.links.values()]
        fenced = [u for u, _ in self.pending.values()]
        return list(dict.fromkeys([*self.owners, *self.links, *linked, *self.pending, *fenced, *self.leftovers]))

    def owner(self, v: Valid) -> str:
        subject = self.initial(v)
        return self.redirect.get(subject, subject)

    def initial(self, v: Valid) -> str:
        e = v.event
        if e.user_id is not None:
            return e.user_id
        subject = anon_subject(e.anonymous_id or "")
        return self.aliases.get(subject, subject)


@dataclass
class Merges:
    """This batch's accepted merges: the merged users' states, the anonymous profiles' deletions
    (with aliases), and identity counters for P:v1:stats."""

    states: dict[str, UserState] = field(default_factory=dict)
    into: dict[str, None] = field(default_factory=dict)  # users that absorbed a profile (ordered set)
    writes: list[UserWrite] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)
    refused: list[tuple[int, Refusal]] = field(default_factory=list)  # (id(link event), why)
    # the same counters by the user whose write records them (the merged-into user, the link
    # event's owner): they are stored with that user's write, so a store written per shard
    # counts each exactly once
    by_user: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, uid: str, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1
        mine = self.by_user.setdefault(uid, {})
        mine[key] = mine.get(key, 0) + 1

    def count_refusals(self, applied: Mapping[int, str]) -> None:
        """Count the refusals of link events applied now (a redelivered link was counted before);
        ``applied``: id() of each event applied now -> its owner."""
        for link, reason in self.refused:
            if link in applied:
                self.count(applied[link], f"identity_refused_{reason}")


def refuse_blocked(valid: list[Valid], policy: IdentityPolicy) -> tuple[list[Valid], list[tuple[Valid, str]]]:
    """(events kept, (event, error) of those whose own identity is a blocked value ("0", "null",
    ...)): attributing them would build one profile out of many people."""
    kept: list[Valid] = []
    blocked: list[tuple[Valid, str]] = []
    for v in valid:
        e = v.event
        if policy.is_blocked(e.user_id) or (e.user_id is None and policy.is_blocked(e.anonymous_id)):
            blocked.append((v, f"identifier {e.user_id if e.user_id is not None else e.anonymous_id!r} is blocked"))
        else:
            kept.append(v)
    return kept, blocked


def anonymous_subjects(valid: list[Valid]) -> list[str]:
    """The anonymous subjects whose stored aliases ``resolve`` needs."""
    return sorted({anon_subject(v.event.anonymous_id) for v in valid if v.event.anonymous_id is not None})


def resolve(valid: list[Valid], aliases: dict[str, str], policy: IdentityPolicy) -> Resolution:
    """Follow existing ``aliases`` and collect this batch's candidate links (first link of an
    anonymous id wins)."""
    links: dict[str, tuple[str, float, int]] = {}
    refused: list[tuple[int, Refusal]] = []
    pending: dict[str, tuple[str, float]] = {}
    leftovers: dict[str, tuple[str, float]] = {}
    for v in valid:
        e = v.event
        if e.anonymous_id is None:
            continue
        subject = anon_subject(e.anonymous_id)
        if e.user_id is None:
            # an event of a merged anonymous id: its state may still be there (the merge was
            # fenced, then the worker died) holding events that come again now; folding it before
            # they resolve to the user makes them redelivered, not counted twice
            if subject in aliases:
                leftovers.setdefault(subject, (aliases[subject], e.epoch))
            continue
        if policy.is_blocked(e.anonymous_id):
            refused.append((id(v), "blocked_id"))
            continue
        linked = aliases.get(subject) or links.get(subject, (None, 0.0, 0))[0]
        if linked == e.user_id:
            if aliases.get(subject) == e.user_id:
                pending.setdefault(subject, (e.user_id, e.epoch))  # merged already, unless its state is still there
            continue  # merged already (or earlier in this batch)
        if linked is not None:
            refused.append((id(v), "already_linked"))
            continue
        links[subject] = (e.user_id, e.epoch, id(v))
    leftovers = {s: found for s, found in leftovers.items() if s not in pending}  # the link completes those
    resolution = Resolution(aliases, links, refused, pending=pending, leftovers=leftovers)
    resolution.owners = list(dict.fromkeys(resolution.initial(v) for v in valid))
    return resolution


def merge(identity: Resolution, loaded: Mapping[str, LoadedUser], policy: IdentityPolicy, keep_ids: int) -> Merges:
    """Decide this batch's merges in order and fold each anonymous state into its user's; records
    the accepted ones in ``identity.redirect``. ``keep_ids``: the catalogue's dedupe window."""
    merges = Merges()
    merges.refused.extend(identity.refused)
    # merges fenced by an earlier attempt first: they were accepted then, and a new link of this
    # batch is refused or accepted counting them (after a crash they were not in the user's state)
    for subject, (uid, at) in identity.pending.items():
        _complete(merges, subject, uid, at, loaded, keep_ids)
    for subject, (uid, at) in identity.leftovers.items():
        if loaded[subject].state is not None:
            _complete(merges, subject, uid, at, loaded, keep_ids)  # the link time is unknown here
    for subject, (uid, at, link) in identity.links.items():
        if loaded[uid].erased or loaded[subject].erased:
            continue  # the erased side's events are dead-lettered; nothing to merge
        target = merges.states.get(uid) or loaded[uid].state or UserState()
        why = refusal(policy, target, at)
        if why is not None:
            merges.refused.append((link, why))
            log.info("identity merge refused (%s) at event time %.0f", why, at)
            continue
        source = loaded[subject].state
        if source is not None:
            merge_into(target, source, subject, at, keep_ids)
        else:
            target.merged = [*target.merged, MergedId(subject, at)]
        merges.states[uid] = target
        merges.into[uid] = None
        identity.redirect[subject] = uid
        published = source.published if source is not None else {}
        merges.writes.append(
            UserWrite(subject, loaded[subject].version, None, audience_remove=list(published.items()), alias_to=uid)
        )
        merges.count(uid, "identity_merged")
    return merges


def _complete(
    merges: Merges, subject: str, uid: str, at: float, loaded: Mapping[str, LoadedUser], keep_ids: int
) -> None:
    """A fenced merge (its alias set by an earlier attempt) that the user's state does not record
    yet: fold the anonymous state, if there is one, and delete it. A merge the user's state
    records is complete once the anonymous state is gone. The link was accepted when fenced."""
    if loaded[uid].erased or loaded[subject].erased:
        return
    source = loaded[subject].state
    target = merges.states.get(uid) or loaded[uid].state or UserState()
    recorded = any(m.subject == subject for m in target.merged)
    if recorded and source is None:
        return  # complete
    if not recorded:
        if source is not None:
            merge_into(target, source, subject, at, keep_ids)
        else:
            target.merged = [*target.merged, MergedId(subject, at)]
        merges.count(uid, "identity_merged")  # else counted with the user's write that folded it
    merges.states[uid] = target
    merges.into[uid] = None
    if source is not None:
        published = list(source.published.items())
        merges.writes.append(UserWrite(subject, loaded[subject].version, None, audience_remove=published, alias_to=uid))
    log.info("completed a merge fenced by an earlier attempt")
