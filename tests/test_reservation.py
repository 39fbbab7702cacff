"""The reservation selection (R1, R2, R4) as property tests of the pure function."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from service.slots.reservation import Candidate, select_reserved, spread

T0 = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)

candidates = st.lists(
    st.tuples(st.integers(0, 40), st.booleans(), st.booleans()), min_size=0, max_size=80
).map(
    lambda rows: [
        Candidate(key=i, starts_at=T0 + timedelta(minutes=15 * band), senior=senior, held=held)
        for i, (band, senior, held) in enumerate(rows)
    ]
)
ratios = st.sampled_from([Decimal("0.10"), Decimal("0.20"), Decimal("0.3333"), Decimal("0.50"), Decimal("1")])
shares = st.sampled_from([Decimal("0"), Decimal("0.50"), Decimal("1")])
bases = st.sampled_from(["all_outpatient", "expert"])


@given(candidates, ratios, shares, bases)
def test_r1_r2_r4_selection_meets_targets_when_it_can(cands, ratio, share, base):
    sel = select_reserved(cands, ratio=ratio, ratio_base=base, min_senior_share=share)
    keys = {c.key for c in cands}
    already = {c.key for c in cands if c.held}
    seniors = {c.key for c in cands if c.senior}
    base_count = len(cands) if base == "all_outpatient" else len(seniors)
    eligible = keys if base == "all_outpatient" else seniors

    assert sel.held <= keys
    assert already <= sel.held  # nothing held is ever dropped
    assert sel.target == math.ceil(ratio * base_count)
    # Ratio: met, unless every eligible slot is already held.
    assert len(sel.held) >= sel.target or (eligible | already) <= sel.held
    # Senior share (R4): met, unless every senior slot is held.
    assert sel.senior_held == len(sel.held & seniors)
    assert sel.senior_held >= sel.senior_target or seniors <= sel.held
    # Never more new slots than needed.
    new = sel.held - already
    assert len(new) <= max(0, sel.target - len(already)) + max(0, sel.senior_target)
    # Expert base (R2): only senior slots are newly held.
    if base == "expert":
        assert new <= seniors


@given(candidates, ratios, shares, bases)
def test_r1_selection_is_deterministic_and_stable(cands, ratio, share, base):
    first = select_reserved(cands, ratio=ratio, ratio_base=base, min_senior_share=share)
    again = select_reserved(list(reversed(cands)), ratio=ratio, ratio_base=base, min_senior_share=share)
    assert first.held == again.held
    # Re-running on its own result changes nothing.
    held = [
        Candidate(key=c.key, starts_at=c.starts_at, senior=c.senior, held=c.key in first.held) for c in cands
    ]
    assert select_reserved(held, ratio=ratio, ratio_base=base, min_senior_share=share).held == first.held


@given(st.integers(1, 200), st.data())
def test_r1_spread_covers_the_whole_day(n, data):
    k = data.draw(st.integers(1, n))
    seq = [Candidate(key=i, starts_at=T0 + timedelta(minutes=i), senior=False, held=False) for i in range(n)]
    picked = [c.key for c in spread(seq, k)]
    assert len(set(picked)) == k
    assert picked == sorted(picked)
    # Evenly spaced: every gap (and both ends) is within one stride of n / k.
    stride = n / k
    edges = [-1, *picked, n]
    assert all(b - a <= math.ceil(stride) + 1 for a, b in itertools.pairwise(edges))


def test_r4_senior_slots_come_first_spread_over_the_morning_and_afternoon():
    cands = [
        Candidate(key=i, starts_at=T0 + timedelta(minutes=30 * i), senior=i % 2 == 0, held=False)
        for i in range(20)
    ]
    sel = select_reserved(
        cands, ratio=Decimal("0.20"), ratio_base="all_outpatient", min_senior_share=Decimal("0.5")
    )
    assert len(sel.held) == 4
    assert sel.senior_held >= 2
    picked = sorted(sel.held)
    assert picked[0] < 10 <= picked[-1]  # both halves of the day


@given(st.integers(0, 9999))
def test_r2_shanghai_ratio_is_exactly_a_third_rounded_up(n):
    from service.policy.presets import PRESETS
    from service.slots.reservation import ceil_share

    shanghai = next(p for p in PRESETS if p["code"] == "shanghai")
    assert ceil_share(shanghai["ratio"], n) == math.ceil(n / 3)


@given(st.lists(st.tuples(st.sampled_from("ABCD"), st.integers(0, 40)), min_size=1, max_size=60), st.data())
def test_r1_picks_are_shared_among_the_days_sessions_in_proportion(rows, data):
    from service.slots.reservation import apportion

    cands = sorted(
        (
            Candidate(key=i, starts_at=T0 + timedelta(minutes=15 * band), senior=False, held=False,
                      tiebreak=(session, i))
            for i, (session, band) in enumerate(rows)
        ),
        key=lambda c: (c.starts_at, c.tiebreak, c.key),
    )  # fmt: skip
    k = data.draw(st.integers(0, len(cands)))
    picked = apportion(cands, k)
    assert len({c.key for c in picked}) == len(picked) == k
    for session in {c.tiebreak[0] for c in cands}:
        share = k * sum(c.tiebreak[0] == session for c in cands) / len(cands)
        got = sum(c.tiebreak[0] == session for c in picked)
        assert math.floor(share) <= got <= math.ceil(share)


def test_r1_two_sessions_at_the_same_hours_both_reach_the_pool():
    cands = [
        Candidate(key=n, starts_at=T0 + timedelta(minutes=15 * (n // 2)), senior=False, held=False,
                  tiebreak=("CT1" if n % 2 == 0 else "MR1", n // 2 + 1))
        for n in range(8)
    ]  # fmt: skip
    sel = select_reserved(
        cands, ratio=Decimal("0.5"), ratio_base="all_outpatient", min_senior_share=Decimal(0)
    )
    assert sorted(c.tiebreak[0] for c in cands if c.key in sel.held) == ["CT1", "CT1", "MR1", "MR1"]
