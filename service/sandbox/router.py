"""Read and move the sandbox clock; outside a sandbox process both answer 404 ``sandbox_off``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.kit.clock import SandboxClock
from service.kit.errors import NotFound
from service.sandbox import service
from service.sandbox.schemas import ClockMoveIn, ClockOut
from service.web.contract import operation
from service.web.state import State
from service.web.unit import Unit, UnitRoute, reads, writes


def sandbox_on(request: Request) -> None:
    """Refuse before anything else, the key included: outside a sandbox nothing here exists."""
    state = request.app.state.slotpool
    if not state.settings.sandbox or not isinstance(state.clock, SandboxClock):
        raise NotFound("sandbox_off", "This server is not a sandbox: its clock is the wall clock.")


router = APIRouter(
    prefix="/v1/sandbox", tags=["sandbox"], route_class=UnitRoute, dependencies=[Depends(sandbox_on)]
)
# Any client of the sandbox may read and move its clock (docs/sandbox.md): an integrator of any
# role tests its own windows, and a sandbox is one integrator's test bed, never production.
Anyone = Annotated[Unit, writes()]
AnyReader = Annotated[Unit, reads()]


def _clock(state: State) -> SandboxClock:
    assert isinstance(state.clock, SandboxClock)  # sandbox_on has run
    return state.clock


@router.get(
    "/clock",
    response_model=ClockOut,
    **operation("getSandboxClock", "Read the sandbox's clock", problems=["sandbox_off"]),
)
async def show_clock(unit: AnyReader, state: State) -> ClockOut:
    """The sandbox's time: the wall clock plus how far integrators have moved it."""
    return await service.show_clock(session=unit.session, clock=_clock(state))


@router.post(
    "/clock",
    response_model=ClockOut,
    **operation(
        "moveSandboxClock",
        "Move the sandbox's clock forward",
        problems=["sandbox_off", "clock_backwards", "date_out_of_range"],
    ),
)
async def move_clock(body: ClockMoveIn, unit: Anyone, state: State) -> ClockOut:
    """Move the sandbox's time forward, to ``now`` or by ``advance`` (ISO 8601, e.g. ``PT25H``).

    Every worker and loop of the sandbox follows: windows, releases, cut-offs, bars and event
    times. Going back is refused with 409 ``clock_backwards``. Audited (``sandbox.clock_moved``).
    """
    return await service.move_clock(
        session=unit.session, actor=unit.actor, clock=_clock(state), to=body.now, advance=body.advance
    )
