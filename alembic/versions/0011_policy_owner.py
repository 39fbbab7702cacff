"""Each policy code belongs to a region, whose commission alone publishes it in place.

Built-in presets, and codes whose hospitals span provinces, stay unowned (null):
a commission that publishes one gets its region's own copy (docs/authorization.md).
Any other code goes to the smallest division that holds every hospital assigned it,
so no commission that could not reach those hospitals before can change it now.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The codes service/policy/presets.py installs, as of this revision.
_PRESETS = ("tianjin", "fuzhou", "shanghai", "heilongjiang", "anhui-provincial", "anhui-alliance")


def _chain(code: str, parents: dict[str, str | None]) -> list[str]:
    """The division and its ancestors, innermost first."""
    chain: list[str] = []
    current: str | None = code
    while current is not None and current not in chain:
        chain.append(current)
        current = parents.get(current)
    return chain


def upgrade() -> None:
    op.add_column("policies", sa.Column("region_code", sa.String(6), nullable=True))
    op.create_foreign_key(
        op.f("fk_policies_region_code_regions"), "policies", "regions", ["region_code"], ["code"]
    )
    bind = op.get_bind()
    parents = dict(bind.execute(sa.text("SELECT code, parent_code FROM regions")).all())
    held: dict[str, list[str]] = {}
    for code, region in bind.execute(
        sa.text(
            "SELECT hp.policy_code, o.region_code FROM hospital_policies hp "
            "JOIN organisations o ON o.id = hp.hospital_id"
        )
    ).all():
        held.setdefault(code, []).append(region)
    for code, regions in held.items():
        if code in _PRESETS:
            continue
        chains = [_chain(r, parents) for r in regions]
        common = [c for c in chains[0] if all(c in chain for chain in chains[1:])]
        if common:  # none: the hospitals are in different provinces, so the code stays shared
            bind.execute(
                sa.text("UPDATE policies SET region_code = :owner WHERE code = :code"),
                {"owner": common[0], "code": code},
            )


def downgrade() -> None:
    op.drop_constraint(op.f("fk_policies_region_code_regions"), "policies", type_="foreignkey")
    op.drop_column("policies", "region_code")
