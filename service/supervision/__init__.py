"""The commission's supervision: access suspensions and revocations (R14), the audit trail (R15)."""
