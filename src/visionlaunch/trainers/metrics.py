"""metrics.jsonl: one JSON object per logged step or epoch, written line by line and flushed, so a crashed
run keeps everything up to its last line and readers can skip a torn final line."""

from __future__ import annotations

import json
from pathlib import Path


class MetricsWriter:
    def __init__(self, path: Path | None):
        self.path = path
        self._fh = open(path, "a", buffering=1) if path is not None else None

    def write(self, record: dict) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def parse_records(text: str) -> tuple[list[dict], int]:
    """The well-formed records of metrics.jsonl text and how many non-blank lines were not (a torn last line from
    a killed run, or damage): those are skipped, never fatal."""
    records, bad = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def read_metrics(path: Path) -> list[dict]:
    """All well-formed records of a metrics.jsonl file; [] when it does not exist."""
    if not Path(path).is_file():
        return []
    return parse_records(Path(path).read_text(errors="replace"))[0]
