"""The store layer behind the three libraries' store Protocols."""
