"""The `world` fixture restores rows instead of calling `build_world`: they must be the same world."""

from __future__ import annotations

from tests.conftest import Reset, WorldRows
from tests.factories import build_world


async def row_counts(reset: Reset) -> dict[str, int]:
    counts = {}
    for name in reset.table_names:
        counts[name] = await reset.conn.fetchval(f"SELECT count(*) FROM {name}")
    return counts


async def test_the_restored_world_is_what_build_world_writes(
    db, crypto, clock, reset: Reset, world_rows: WorldRows
):
    built = await build_world(db, crypto, clock)
    built_counts = await row_counts(reset)
    built_rows = await reset.capture()
    assert built.ids == world_rows.ids
    assert built.keys.keys() == world_rows.keys.keys()
    assert built_rows.tables.keys() == world_rows.rows.tables.keys()
    assert built_rows.sequences == world_rows.rows.sequences

    await reset.empty()
    assert await reset.is_empty()
    await reset.restore(world_rows.rows)
    assert await row_counts(reset) == built_counts
    assert (await reset.capture()).sequences == built_rows.sequences


async def test_the_world_fixture_gives_working_keys(client, world):
    for who in world.keys:
        r = await client.get("/v1/me", headers=world.auth(who))
        assert r.status_code == 200, (who, r.text)
