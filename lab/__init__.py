"""The attack lab: a small internet on loopback (DNS, CA, policy hosts, MX hosts, attacker)."""
