"""GB 11643 resident ID validation, as property tests over synthetic IDs."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.kit.crypto import mask_id_number, mask_name
from service.residents.idnumber import PROVINCES, InvalidIdNumber, check_char, normalise_id_number

regions = st.sampled_from(sorted(PROVINCES)).flatmap(
    lambda p: st.integers(0, 9999).map(lambda n: f"{p}{n:04d}")
)
births = st.dates(min_value=date(1900, 1, 1), max_value=date(2026, 1, 1))
seqs = st.integers(0, 999)


def make(region: str, born: date, seq: int) -> str:
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    return first17 + check_char(first17)


@given(regions, births, seqs)
def test_r8_valid_ids_are_accepted_and_normalised(region, born, seq):
    value = make(region, born, seq)
    assert normalise_id_number(value.lower()) == value
    assert normalise_id_number(f"  {value}  ") == value


@given(regions, births, seqs, st.integers(0, 16), st.integers(1, 9))
def test_r8_any_single_digit_change_is_caught(region, born, seq, position, delta):
    value = make(region, born, seq)
    digit = (int(value[position]) + delta) % 10
    changed = value[:position] + str(digit) + value[position + 1 :]
    with pytest.raises(InvalidIdNumber):
        normalise_id_number(changed)


@given(regions, births, seqs, st.sampled_from("0123456789X"))
def test_r8_wrong_check_character_is_refused(region, born, seq, char):
    value = make(region, born, seq)
    if char == value[-1]:
        return
    with pytest.raises(InvalidIdNumber) as err:
        normalise_id_number(value[:-1] + char)
    assert err.value.reason == "check_character"


@pytest.mark.parametrize(
    ("first17", "reason"),
    [
        ("34010219580230001", "birth_date"),  # 30 February
        ("34010219581301001", "birth_date"),  # month 13
        ("34010218990101001", "birth_date"),  # before 1900
        ("99010219580101001", "region"),
    ],
)
def test_r8_impossible_ids_are_refused(first17, reason):
    with pytest.raises(InvalidIdNumber) as err:
        normalise_id_number(first17 + check_char(first17))
    assert err.value.reason == reason


def test_r8_future_birth_date_is_refused():
    today = date(2026, 3, 2)
    first17 = f"340102{today + timedelta(days=1):%Y%m%d}001"
    with pytest.raises(InvalidIdNumber):
        normalise_id_number(first17 + check_char(first17), today=today)


@pytest.mark.parametrize("raw", ["", "3401021958", "34010219580412001X1", "34010219580412001Y"])
def test_r8_malformed_ids_are_refused(raw):
    with pytest.raises(InvalidIdNumber):
        normalise_id_number(raw)


def test_r15_masks_keep_only_the_ends():
    value = make("340102", date(1958, 4, 12), 7)
    masked = mask_id_number(value)
    assert masked[0] == value[0]
    assert masked[-1] == value[-1]
    assert set(masked[1:-1]) == {"*"}
    assert len(masked) == 18
    assert mask_name("张三丰") == "张**"
