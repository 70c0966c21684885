"""``metrics.jsonl``: one JSON record per line, as the loop wrote it (step, epoch, losses, lr, times, ...). Always
written: it is the run's own record, which resumes and the benchmarks read."""

from __future__ import annotations

import json
from collections.abc import Mapping

from mimkit.engine.run_folder import METRICS_NAME
from mimkit.engine.trackers.base import Tracker, TrackerContext, keep_records_until, torn_note


def _step_of(line: str) -> int | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("step", 0) if isinstance(record, dict) else None


class JsonlTracker(Tracker):
    """Appends each record to ``metrics.jsonl``; a resume first drops the records after its checkpoint's step (which
    the run redoes) and any unreadable line, by an atomic rewrite."""

    def __init__(self, context: TrackerContext) -> None:
        self.path = context.output / METRICS_NAME
        self.notes = []
        if context.resume_step is not None and self.path.exists():
            self.notes = torn_note(self.path, keep_records_until(self.path, context.resume_step, _step_of))

    def log_scalars(self, step: int, scalars: Mapping[str, float], tag: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **scalars}) + "\n")
