"""TLS-RPT (RFC 8460): session counting, report building and delivery by mailto and https."""
