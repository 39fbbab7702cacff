"""The thresholds of the scalping signals (R14): policy data, published with a hospital's policy.

Every signal measures a share: of a subject's referrals (or cancellations) in a
sliding window ending now, the part that looks like scalping. A signal raises an
alert when at least ``min_events`` referrals (or cancellations) are in the window
and the share reaches ``threshold``. docs/signals.md says why each one points to
scalping.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from service.kit.schemas import ApiModel

MAX_WINDOW_HOURS = 30 * 24


class SignalRule(ApiModel):
    """When one signal alerts: its window, the smallest sample it judges, and the share that alerts."""

    model_config = ConfigDict(extra="forbid")

    window_hours: int = Field(ge=1, le=MAX_WINDOW_HOURS, description="The sliding window, ending now.")
    min_events: int = Field(
        ge=1, le=10_000, description="Fewer referrals (or cancellations) in the window are not judged."
    )
    threshold: float = Field(gt=0, le=1, description="The share at or above which the signal alerts.")


class ChurnRule(SignalRule):
    hold_hours: int = Field(
        ge=1, le=MAX_WINDOW_HOURS, description="A cancellation this soon after booking counts as churn."
    )


class NearReleaseRule(SignalRule):
    near_minutes: int = Field(
        ge=1,
        le=24 * 60,
        description="A cancellation this close to the slot's public_at, either side, counts.",
    )


class NewSigningRule(SignalRule):
    recent_days: int = Field(
        ge=1, le=365, description="A contract that started this few days before the booking is new."
    )


class BurstRule(SignalRule):
    gap_minutes: int = Field(
        ge=1, le=120, description="Consultations of different residents closer than this are implausible."
    )


class SignalThresholds(ApiModel):
    """Per-signal thresholds; a policy that leaves one out gets its default."""

    model_config = ConfigDict(extra="forbid")

    book_cancel_churn: ChurnRule = Field(
        default_factory=lambda: ChurnRule(window_hours=168, min_events=6, threshold=0.5, hold_hours=12)
    )
    cancel_near_release: NearReleaseRule = Field(
        default_factory=lambda: NearReleaseRule(
            window_hours=168, min_events=4, threshold=0.5, near_minutes=60
        )
    )
    new_signing_referrals: NewSigningRule = Field(
        default_factory=lambda: NewSigningRule(window_hours=168, min_events=6, threshold=0.6, recent_days=7)
    )
    senior_only_referrals: SignalRule = Field(
        default_factory=lambda: SignalRule(window_hours=168, min_events=6, threshold=0.4),
        description="threshold: how far the senior share of the subject's outpatient referrals "
        "exceeds the senior share of the hospital's pool over the same window.",
    )
    consultation_burst: BurstRule = Field(
        default_factory=lambda: BurstRule(window_hours=168, min_events=6, threshold=0.5, gap_minutes=3)
    )
    consultation_off_hours: SignalRule = Field(
        default_factory=lambda: SignalRule(window_hours=168, min_events=6, threshold=0.3)
    )

    def rule(self, signal: str) -> SignalRule:
        found: SignalRule = getattr(self, signal)
        return found


def default_thresholds() -> dict[str, object]:
    """The deployment's defaults, as stored in a policy's ``signal_thresholds``."""
    return SignalThresholds().model_dump(mode="json")
