"""Shared plumbing for benchmark scripts: arguments, the printed table, ``--json`` and results files.

Each ``bench_*.py`` builds a :class:`Report` and calls :func:`finish`. ``--quick`` asks for a size
that finishes in under a minute; ``--json`` prints one JSON object with the keys ``name``,
``metrics``, ``peer``, ``ratios`` and ``targets`` (each ``{target, value, met}``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

RESULTS = Path(__file__).parent / "results"


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a smaller size (under a minute)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args()


@dataclass
class Report:
    name: str
    metrics: dict[str, Any] = field(default_factory=dict)
    peer: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    rows: list[tuple[str, str, str]] = field(default_factory=list)

    def row(self, what: str, value: str, note: str = "") -> None:
        """A line of the printed table."""
        self.rows.append((what, value, note))

    def target(self, name: str, target: str, value: float, met: bool) -> None:
        self.targets[name] = {"target": target, "value": value, "met": bool(met)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "metrics": self.metrics,
            "peer": self.peer,
            "ratios": self.ratios,
            "targets": self.targets,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        }


def finish(report: Report, args: argparse.Namespace) -> int:
    """Print the report, write ``benchmarks/results/NAME.json``; exit 0 even when targets miss."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"{report.name}{suffix}.json").write_text(json.dumps(data, indent=2, default=str))
    if args.json:
        print(json.dumps(data, default=str))
        return 0
    width = max((len(r[0]) for r in report.rows), default=10)
    print(f"\n{report.name}")
    for what, value, note in report.rows:
        print(f"  {what.ljust(width)}  {value:>14}  {note}")
    if report.targets:
        print("  targets:")
        for name, t in report.targets.items():
            mark = "met" if t["met"] else "MISSED"
            print(f"    {name}: {t['value']:.4g} (target {t['target']}) {mark}")
    sys.stdout.flush()
    return 0
