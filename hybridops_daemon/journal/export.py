"""Export one run as a folder of JSON files for an auditor.

Works on plain dicts shaped like ``Record.to_dict()`` so that ``hyopsctl`` can export records it received over the
control socket without opening the journal. ``meta.json`` carries the first and last record's seq and hash: an
auditor ties the folder to the journal by finding those hashes in a ``journal verify``-ed chain.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_STEP_PREFIX = "step."


def _entry(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"seq": record.get("seq"), "kind": record.get("kind"), "ts": record.get("ts"), "body": record.get("body")}


def steps_of_run(ordered: Sequence[Mapping[str, Any]], declared: Sequence[str]) -> list[dict[str, Any]]:
    """Per step, in chain order (steps the run never reached included), its ``step.*`` records in seq order."""
    by_step: dict[str, list[dict[str, Any]]] = {step: [] for step in declared}
    for record in ordered:
        if str(record.get("kind", "")).startswith(_STEP_PREFIX):
            by_step.setdefault(str(record["body"].get("step")), []).append(_entry(record))
    # A list, not a mapping: the files are written with sorted keys, which would lose the chain order.
    return [{"step": step, "records": records} for step, records in by_step.items()]


def write_run_folder(records: Sequence[Mapping[str, Any]], directory: Path) -> list[Path]:
    """Write meta, inputs, steps, probes, outputs and records JSON files into ``directory``; returns their paths.

    Creates ``directory`` (and parents). Raises FileExistsError if it exists and is not empty, ValueError if the
    records hold no ``run.start`` record. Not atomic: a failure part-way leaves the files written so far.
    """
    if directory.is_dir() and any(directory.iterdir()):
        raise FileExistsError(f"refusing to export into {directory}: it exists and is not empty")
    ordered = sorted(records, key=lambda r: int(r["seq"]))
    start = next((r for r in ordered if r.get("kind") == "run.start"), None)
    if start is None:
        raise ValueError("no run.start record among the records: not a run")
    end = next((r for r in reversed(ordered) if r.get("kind") == "run.end"), None)
    start_body: Mapping[str, Any] = start["body"]
    end_body: Mapping[str, Any] = end["body"] if end else {}
    status = "running" if end is None else ("succeeded" if end_body.get("ok") else "failed")
    meta = {
        "run_id": start_body.get("run_id", start.get("run_id")),
        "lane": start_body.get("lane", start.get("lane")),
        **{key: start_body.get(key) for key in ("chain", "kind", "trigger", "actor", "reason", "profile")},
        "fencing_token": start_body.get("fencing_token"),
        "started_at": start.get("ts"),
        "ended_at": end.get("ts") if end else None,
        "status": status,
        "end_reason": end_body.get("reason"),
        "first_seq": ordered[0]["seq"],
        "first_hash": ordered[0].get("hash"),
        "last_seq": ordered[-1]["seq"],
        "last_hash": ordered[-1].get("hash"),
        "record_count": len(ordered),
    }
    outputs = end_body.get("outputs")
    if outputs is None:  # the run has not ended (or ended without outputs): what its finished steps published
        outputs = {str(r["body"].get("step")): r["body"].get("outputs") for r in ordered if r.get("kind") == "step.done"}
    files: dict[str, Any] = {
        "meta.json": meta,
        "inputs.json": start_body.get("inputs", {}),
        "steps.json": steps_of_run(ordered, [str(s) for s in start_body.get("steps", [])]),
        "probes.json": [_entry(r) for r in ordered if r.get("kind") == "step.verify"],
        "outputs.json": outputs,
        "records.json": [dict(r) for r in records],
    }
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, content in files.items():
        path = directory / name
        path.write_text(json.dumps(content, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n", "utf-8")
        written.append(path)
    return written
