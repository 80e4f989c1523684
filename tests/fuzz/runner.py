"""Run one target of `tests/fuzz/targets.py` under atheris (libFuzzer): see tests/fuzz/README.md.

    python tests/fuzz/fuzz_config.py -max_total_time=600 [CORPUS_DIR ...] [libFuzzer flags]

Without a corpus directory the seeds of `targets.SEEDS` are written to
``tests/fuzz/.corpus/<target>/`` (git-ignored) and that directory is used, so a second run goes
on from what the first one found; `dicts/<target>.dict` is passed as ``-dict=`` unless one is
given. A crash leaves ``crash-<sha1>`` in the working directory.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_OURS = ["mtasts", "detect", "tlsrpt_emit", "relay"]


def main(target: str) -> None:
    sys.path.insert(0, str(ROOT))
    import atheris  # the optional extra: pip install -e '.[fuzz]'

    # The stdlib email parser (aiosmtpd's address parser, DSN and report mail) and the SMTP
    # libraries are instrumented too: most of the parsing the targets reach happens there.
    with atheris.instrument_imports(include=[*_OURS, "aiosmtpd", "aiosmtplib", "email", "tomllib"]):
        from tests.fuzz import targets
    run = targets.TARGETS[target]
    argv = list(sys.argv)
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = ROOT / "tests" / "fuzz" / ".corpus" / target
        corpus.mkdir(parents=True, exist_ok=True)
        for seed in targets.SEEDS[target]:
            (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
        argv.append(str(corpus))
    words = ROOT / "tests" / "fuzz" / "dicts" / f"{target}.dict"
    if words.exists() and not any(a.startswith("-dict=") for a in argv):
        argv.insert(1, f"-dict={words}")
    atheris.Setup(argv, run)
    atheris.Fuzz()
