"""The stsguard program: config, SMTP in, durable spool, delivery, CLI. Composes the libraries."""
