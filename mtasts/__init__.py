"""MTA-STS (RFC 8461): record and policy parsing, MX matching, HTTPS fetch, cache and service."""
