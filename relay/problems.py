"""`Problem`: one thing `stsguard check` and the relay's start find wrong with the set-up. Below
every layer that reports one (`relay.preflight`, `relay.state.check`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["warning", "error"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the set-up; `message` starts with the key it is about."""

    level: Level
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"
