"""Outbound delivery: MX look-up, the MX session, STARTTLS, message transfer, reporting."""
