"""MTA-STS (RFC 8461): record and policy parsing, MX matching, HTTPS fetch, cache and service.

Entry points: `mtasts.service.PolicyService` (the relay's one question: which policy applies to
this recipient domain), `mtasts.parse` and `mtasts.match` (pure), `mtasts.fetch` (live look-ups),
`mtasts.cache` (stores), `mtasts.errors` (every error carries its RFC 8460 result type).
"""
