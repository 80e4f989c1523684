"""The attack lab: a small internet on loopback (DNS, CA, policy hosts, MX hosts, attacker)."""

from relay.log import capture_warnings

# The lab's programs (`python -m lab.serve`, the runner) are entry points: a library's warning
# at import (dnspython's DNSSEC module under a newer cryptography) goes to the log, not stderr.
capture_warnings()
