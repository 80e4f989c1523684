"""The store layer behind the three libraries' store Protocols.

One `Database` (SQLite file or PostgreSQL pool: `database.py`) with transactions and versioned
schema migrations (`migrations.py`); SQL implementations of `PolicyStore`, `TlsHistoryStore` and
`ReportStore` written once for both dialects (`policy_store.py`, `history_store.py`,
`report_store.py`); for PostgreSQL, the in-memory front that keeps mail flowing through a database
outage (`shared.py`); `open_state` (`stores.py`) builds them from `[state].url`.
"""
