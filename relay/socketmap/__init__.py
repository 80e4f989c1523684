"""`stsguard socketmap`: the relay's policy engine as Postfix's `smtp_tls_policy_maps`.

- `netstring` — the framing (sans-IO);
- `protocol` — requests (`name key`) and replies (`OK data`, `NOTFOUND `, `TEMP reason`, ...);
- `answer` — the pure answer: what one domain's MTA-STS policy, DANE state and local override
  mean as a Postfix TLS policy;
- `lookup` — the facts `answer` needs (policy service, MX and TLSA look-ups), in memory first;
- `server` — the asyncio server on TCP or a Unix socket.
"""
