"""What `stsguard probe` and `stsguard policy` show of a domain's MX hosts: live probes and DANE
views, planned by `relay.delivery.policy` as delivery plans them. Only the CLI imports this."""
