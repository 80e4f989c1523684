"""The shipped example config loads, and documents every key the loader knows."""

from __future__ import annotations

import re
from pathlib import Path

from relay.config import Config, config_keys, load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "stsguard.example.toml"


def test_example_config_loads_with_default_values() -> None:
    config = load_config(EXAMPLE)
    assert config == Config()


def test_example_config_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section, keys in config_keys().items():
        assert f"[{section}]" in text, section
        for key in keys:
            assert re.search(rf"^{key} = ", text, re.MULTILINE), f"[{section}].{key} undocumented"
