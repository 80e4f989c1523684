"""A real Postfix as the upstream MTA of a test: `relayhost` pointing at the relay under test.

Shared by the tests that put Debian's Postfix in front of stsguard (`.ci/run` installs it); the
instance itself is the `upstream` fixture of tests/relay/conftest.py.
"""

from __future__ import annotations

import os
import shutil

import pytest

needs_postfix = pytest.mark.skipif(
    shutil.which("postfix") is None or os.geteuid() != 0,
    reason="needs Debian's postfix and root (.ci/run installs it)",
)

# Added to lab.postfix's instance settings: everything goes to stsguard by address (no DNS), as
# `relayhost` does on a real Postfix.
RELAYHOST_CF = """\
myhostname = postfix.upstream.test
relayhost = [127.0.0.1]:{relay_port}
"""
