"""A department-day's slots that a push may not take select as a tally, exactly as one by one (R1, R2, R4).

A push takes slots of the session it changes only; the department-day's other slots count towards
the base and towards what is held. Passing them as a ``Tally`` must give the selection that passing
them as candidates that may not be taken gives.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from service.slots.reservation import Candidate, Tally, check_marked, select_reserved

T0 = datetime(2026, 3, 10, 0, 0, tzinfo=UTC)

rows = st.lists(
    st.tuples(st.integers(0, 30), st.booleans(), st.booleans(), st.booleans(), st.booleans()), max_size=60
)
ratios = st.sampled_from([Decimal("0.10"), Decimal("0.20"), Decimal("0.3333"), Decimal("0.50"), Decimal("1")])
shares = st.sampled_from([Decimal("0"), Decimal("0.50"), Decimal("1")])
bases = st.sampled_from(["all_outpatient", "expert"])


@given(rows, ratios, shares, bases, st.booleans())
def test_r1_r2_r4_the_other_sessions_as_a_tally_select_as_candidates_do(rows, ratio, share, base, marked):
    # (band, senior, held, own session, reservable): only the own session's slots may be reservable.
    cands = [
        Candidate(i, T0 + timedelta(minutes=15 * band), senior, held, own and reservable)
        for i, (band, senior, held, own, reservable) in enumerate(rows)
    ]
    own = [c for c, row in zip(cands, rows, strict=True) if row[3]]
    others = [c for c, row in zip(cands, rows, strict=True) if not row[3]]
    tally = Tally(
        slots=len(others),
        senior_slots=sum(c.senior for c in others),
        held=sum(c.held for c in others),
        senior_held=sum(c.held and c.senior for c in others),
    )
    measure = check_marked if marked else select_reserved
    whole = measure(cands, ratio=ratio, ratio_base=base, min_senior_share=share)
    split = measure(own, ratio=ratio, ratio_base=base, min_senior_share=share, others=tally)

    assert split.held == whole.held - {c.key for c in others}
    assert split.held_count == len(whole.held) == whole.held_count
    assert (split.target, split.senior_target, split.senior_held) == (
        whole.target,
        whole.senior_target,
        whole.senior_held,
    )
    assert (split.ratio_short, split.senior_short) == (whole.ratio_short, whole.senior_short)
