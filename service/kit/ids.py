"""Identifiers as the API accepts them: positive and within PostgreSQL's bigint."""

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

MAX_ID = 2**63 - 1

DbId = Annotated[int, Field(gt=0, le=MAX_ID)]
PathId = Annotated[int, Path(gt=0, le=MAX_ID)]
QueryId = Annotated[int | None, Query(gt=0, le=MAX_ID)]
