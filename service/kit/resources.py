"""What the pool holds (R18): outpatient visits, examinations on a modality, inpatient beds.

A clinic session is of exactly one resource kind and its slots inherit it.
An examination session names its modality from the closed list below, so that
a family doctor searching for "MRI" finds every hospital's MRI blocks; a bed
session names its ward. The lists live here, in the schemas (as Literals) and
in CHECK constraints: adding a modality is a migration, as adding a title is.
"""

from __future__ import annotations

from typing import Literal, get_args

ResourceKind = Literal["outpatient", "examination", "bed"]
RESOURCE_KINDS: tuple[str, ...] = get_args(ResourceKind)

Modality = Literal[
    "CT",
    "MRI",
    "PET-CT",
    "PET-MRI",
    "SPECT",
    "X-ray",
    "mammography",
    "ultrasound",
    "DSA",
    "endoscopy",
    "ECG",
]
MODALITIES: tuple[str, ...] = get_args(Modality)

# R16 (time slots of at most 30 minutes) governs visits and examinations. A bed is
# booked by the day: its slot is the ward's admission window, at most one day long.
MAX_SLOT_MINUTES = 30
MAX_BED_WINDOW_MINUTES = 24 * 60


def sql_list(values: tuple[str, ...]) -> str:
    """``('a', 'b')`` for a CHECK constraint."""
    return "(" + ", ".join(f"'{v}'" for v in values) + ")"
