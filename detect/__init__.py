"""STARTTLS downgrade detection: pure judges of what a peer said, and remembered TLS per MX host."""
