"""SMTP intake: the server, AUTH, group commit, the intake processes (validate and spool only)."""
