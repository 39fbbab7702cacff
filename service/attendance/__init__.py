"""Attendance reports, no-show bars (R13) and the hospital's receipt of referrals."""
