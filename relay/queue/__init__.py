"""The queue manager: the durable spool, scheduling, retry and expiry, bounces."""
