"""Ground truth of recorded traces: the `.json` beside each `.ami` file.

`expected.config` is the PBX set-up to replay with; `expected.calls` lists the
records callhub must produce. Only keys present are asserted; seconds match
within `tolerance.seconds`; `rings` given as a list accepts any listed value;
`attempts` match in order by interface and result (shared/traces/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from callhub.config import PbxConfig, settings_from_mapping
from callhub.records import CallRecord


def truth_path(trace: str | Path) -> Path:
    """`x.ami` -> `x.json`."""
    return Path(trace).with_suffix(".json")


def load_truth(trace: str | Path) -> dict[str, Any]:
    with open(truth_path(trace), encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def pbx_from_truth(truth: dict[str, Any]) -> PbxConfig:
    """The PbxConfig of a trace's `expected.config`, validated like a config file's."""
    return settings_from_mapping({"pbx": [truth["expected"]["config"]]}).pbxs[0]


def compare(records: list[CallRecord], truth: dict[str, Any]) -> list[str]:
    """Every difference between the records and the ground truth, as readable lines."""
    expected = truth["expected"]
    tolerance = float(expected.get("tolerance", {}).get("seconds", 0.0))
    by_id = {r.linkedid: r.to_dict() for r in records}
    problems = []
    wanted = {c["linkedid"] for c in expected["calls"]}
    for extra in sorted(set(by_id) - wanted):
        problems.append(f"{extra}: a call the ground truth does not list")
    for call in expected["calls"]:
        got = by_id.get(call["linkedid"])
        if got is None:
            problems.append(f"{call['linkedid']}: no record")
            continue
        for key, want in call.items():
            problems.extend(f"{call['linkedid']}: {p}"
                            for p in _compare_key(key, want, got, tolerance))
    return problems


def _compare_key(key: str, want: Any, got: dict[str, Any], tolerance: float) -> list[str]:
    if key == "attempts":
        have = [(a["interface"], a["result"]) for a in got["attempts"]]
        need = [(a["interface"], a["result"]) for a in want]
        return [] if have == need else [f"attempts {have} != {need}"]
    if key == "transfers":
        got_transfers = [{k: t[k] for k in ("type", "to")} for t in got["transfers"]]
        want_transfers = [{k: t[k] for k in ("type", "to") if k in t} for t in want]
        if got_transfers == want_transfers:
            return []
        return [f"transfers {got_transfers} != {want_transfers}"]
    if key not in got:
        return [f"{key}: missing from the record"]
    value = got[key]
    if key == "rings" and isinstance(want, list):
        return [] if value in want else [f"rings {value} not in {want}"]
    if key.endswith("_seconds") and isinstance(want, int | float):
        ok = isinstance(value, int | float) and abs(value - want) <= tolerance + 1e-9
        return [] if ok else [f"{key} {value} != {want} (±{tolerance})"]
    return [] if value == want else [f"{key} {value!r} != {want!r}"]
