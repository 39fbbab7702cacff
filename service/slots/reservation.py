"""Choosing which slots to hold for the pool (R1, R2, R4), as a pure function.

The unit is one department on one day. The target is ``ceil(ratio × base)``
where the base is every slot (all outpatient) or the senior doctors' slots
only (expert base, R2). Of the target, ``ceil(min_senior_share × target)``
must be senior (associate chief or above, R4).

The selection is made for the department-day as a whole. A candidate marked
``held`` stays held whatever the rest of the day looks like: a booked or
returned slot, or a reserved one whose pool window has opened (a family doctor
may be looking at it). Every other slot the pool may hold is passed as
``reservable`` and not held, so the same day gives the same selection however
its sessions arrived (``slots/batch.py`` decides which slot is which). The
selection takes senior slots first, up to the senior target, then any
eligible slot. Each time the picks are shared among the day's sessions in
proportion to their free candidates (so a CT block and an MRI block at the
same hours both reach the pool), and evenly spaced over each session's time
(so the pool gets early and late slots alike). Holding more than the target is
allowed ("at least").

Slots that count but that no selection may take or drop can be passed as a
``Tally``: the counts they add to the base and to what is held, which gives the
same selection as passing them one by one as candidates that may not be taken.
Ties in time are broken by ``tiebreak`` (the HIS's session ID and the slot's
number), which the pushes do not change, and only then by ``key``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from operator import itemgetter
from typing import NamedTuple


class Candidate(NamedTuple):
    """A slot of the department-day (a tuple: a push builds thousands)."""

    key: int
    starts_at: datetime
    senior: bool
    held: bool  # already reserved, booked or returned: the pool has it
    reservable: bool = True  # may be newly held by this selection
    tiebreak: tuple[str, int] = ("", 0)  # (session's HIS ID, slot number): orders slots starting together


@dataclass(frozen=True)
class Tally:
    """Candidates of the department-day that the selection may not take, counted."""

    slots: int = 0
    senior_slots: int = 0
    held: int = 0
    senior_held: int = 0


NO_OTHERS = Tally()


@dataclass(frozen=True)
class Selection:
    held: frozenset[int]  # every key held after this selection (old and new), the tally's aside
    target: int
    senior_target: int
    senior_held: int  # the tally's included
    others_held: int = 0  # held slots of the tally, not listed in ``held``

    @property
    def held_count(self) -> int:
        return len(self.held) + self.others_held

    @property
    def ratio_short(self) -> bool:
        return self.held_count < self.target

    @property
    def senior_short(self) -> bool:
        return self.senior_held < self.senior_target


_BY_TIME = itemgetter(1, 5, 0)  # (starts_at, tiebreak, key)


def ceil_share(share: Decimal, count: int) -> int:
    return math.ceil(share * count)


def spread(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """``k`` candidates evenly spaced over a time-ordered sequence."""
    n = len(candidates)
    k = min(k, n)
    return [candidates[(2 * i + 1) * n // (2 * k)] for i in range(k)]


def apportion(candidates: Sequence[Candidate], k: int) -> list[Candidate]:
    """``k`` time-ordered candidates shared among their sessions (``tiebreak[0]``) in proportion to
    each session's number (largest remainder, ties by session), each session's ``spread``."""
    n = len(candidates)
    k = min(k, n)
    if k <= 0:
        return []
    by_session: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_session.setdefault(c.tiebreak[0], []).append(c)
    if len(by_session) == 1:
        return spread(candidates, k)
    quotas = {session: k * len(own) // n for session, own in by_session.items()}
    left = k - sum(quotas.values())
    for session in sorted(by_session, key=lambda s: (-(k * len(by_session[s]) % n), s))[:left]:
        quotas[session] += 1
    picked = [c for session, own in by_session.items() for c in spread(own, quotas[session])]
    return sorted(picked, key=_BY_TIME)


def targets(
    candidates: Sequence[Candidate],
    *,
    ratio: Decimal,
    ratio_base: str,
    min_senior_share: Decimal,
    others: Tally = NO_OTHERS,
) -> tuple[int, int]:
    if ratio_base == "all_outpatient":
        base = len(candidates) + others.slots
    else:
        base = sum(c.senior for c in candidates) + others.senior_slots
    target = ceil_share(ratio, base)
    return target, ceil_share(min_senior_share, target)


def select_reserved(
    candidates: Sequence[Candidate],
    *,
    ratio: Decimal,
    ratio_base: str,
    min_senior_share: Decimal,
    others: Tally = NO_OTHERS,
) -> Selection:
    """Which slots the pool holds for one department-day (``others``: its slots not to be taken)."""
    ordered = sorted(candidates, key=_BY_TIME)
    target, senior_target = targets(
        ordered, ratio=ratio, ratio_base=ratio_base, min_senior_share=min_senior_share, others=others
    )
    held = {c.key for c in ordered if c.held}
    senior_held = sum(1 for c in ordered if c.held and c.senior) + others.senior_held
    eligible = [
        c for c in ordered if c.reservable and not c.held and (c.senior or ratio_base == "all_outpatient")
    ]

    need_senior = max(0, senior_target - senior_held)
    for c in apportion([c for c in eligible if c.senior], need_senior):
        held.add(c.key)
        senior_held += 1

    need_any = max(0, target - len(held) - others.held)
    for c in apportion([c for c in eligible if c.key not in held], need_any):
        held.add(c.key)
        senior_held += c.senior

    return Selection(
        held=frozenset(held),
        target=target,
        senior_target=senior_target,
        senior_held=senior_held,
        others_held=others.held,
    )


def check_marked(
    candidates: Sequence[Candidate],
    *,
    ratio: Decimal,
    ratio_base: str,
    min_senior_share: Decimal,
    others: Tally = NO_OTHERS,
) -> Selection:
    """For hospitals that mark slots themselves: measure their marks against the policy."""
    target, senior_target = targets(
        candidates, ratio=ratio, ratio_base=ratio_base, min_senior_share=min_senior_share, others=others
    )
    held = frozenset(c.key for c in candidates if c.held)
    senior_held = sum(1 for c in candidates if c.held and c.senior) + others.senior_held
    return Selection(
        held=held,
        target=target,
        senior_target=senior_target,
        senior_held=senior_held,
        others_held=others.held,
    )
