"""Top functions of a py-spy speedscope profile, by inclusive and by own samples.

python bench/profile_summary.py PROFILE.speedscope.json [--top 25] [--filter mtasts,relay]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def summarize(path: Path, top: int, only: tuple[str, ...]) -> str:
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    # py-spy makes one frame per line; add them up per function.
    names = [f"{f['name']} ({'/'.join(f.get('file', '').split('/')[-2:])})" for f in frames]
    files = {names[i]: f.get("file", "") for i, f in enumerate(frames)}
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0.0
    for profile in data["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            total += weight
            for name in {names[i] for i in stack}:
                inclusive[name] += weight
            if stack:
                own[names[stack[-1]]] += weight

    def label(name: str) -> str:
        return name

    def keep(name: str) -> bool:
        return not only or any(part in files[name] for part in only)

    lines = [f"{path.name}: {total:.2f} s sampled"]
    for title, counter in (("inclusive", inclusive), ("own", own)):
        lines.append(f"-- by {title} samples")
        shown = [(i, n) for i, n in counter.most_common() if keep(i)][:top]
        lines += [f"{100 * n / total:5.1f}%  {label(i)}" for i, n in shown]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--filter", default="", help="comma-separated path parts to keep")
    args = parser.parse_args()
    only = tuple(p for p in args.filter.split(",") if p)
    print(summarize(args.profile, args.top, only))


if __name__ == "__main__":
    main()
