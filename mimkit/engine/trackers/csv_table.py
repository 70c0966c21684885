"""``metrics.csv``: the records as a table, one row per record, for spreadsheets and pandas.

The header is stable: ``step`` first, then each field in the order it first appeared. A field that appears later
(the first validation's ``val_top1``, say) is appended as a new column: the file is rewritten once, atomically,
with the earlier rows' cells of that column left empty. Cells a record does not have are empty too (a training
step has no ``val_top1``, a validation record no ``loss``)."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

from mimkit.engine.atomic_files import atomic_write
from mimkit.engine.run_folder import CSV_METRICS_NAME
from mimkit.engine.trackers.base import Tracker, TrackerContext, keep_records_until, torn_note


def _row_text(cells: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _cells(line: str) -> list[str]:
    return next(csv.reader([line]), [])


class CsvTracker(Tracker):
    """Appends a row per record to ``metrics.csv``; a resume drops the rows after its checkpoint's step, and
    unreadable ones, as for ``metrics.jsonl``."""

    def __init__(self, context: TrackerContext) -> None:
        self.path = context.output / CSV_METRICS_NAME
        self.notes = []
        self.columns: list[str] = []
        if context.resume_step is None or not self.path.exists():
            self.path.write_text("", encoding="utf-8")
            return
        header = self._header()

        def step_of(line: str) -> int | None:
            cells = _cells(line)
            if len(cells) != len(header) or not cells[0].isdigit():
                return None
            return int(cells[0])

        torn = keep_records_until(self.path, context.resume_step, step_of, header_lines=1)
        self.notes = torn_note(self.path, torn)
        self.columns = self._header()  # none where the header itself was torn

    def _header(self) -> list[str]:
        return _cells(self.path.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0])

    def log_scalars(self, step: int, scalars: Mapping[str, float], tag: str) -> None:
        new = [name for name in ("step", *scalars) if name not in self.columns]
        if new:
            self._add_columns(new)
        record = {"step": step, **scalars}
        with self.path.open("a", encoding="utf-8", newline="") as handle:
            handle.write(_row_text([record.get(name, "") for name in self.columns]))

    def _add_columns(self, names: list[str]) -> None:
        """Rewrite the file with ``names`` appended to the header and empty cells for them in the rows so far."""
        rows = self.path.read_text(encoding="utf-8").split("\n")[1:] if self.columns else []
        self.columns = [*self.columns, *names]
        padding = "," * len(names)
        text = _row_text(self.columns) + "".join(f"{row}{padding}\n" for row in rows if row)
        atomic_write(self.path, text.encode("utf-8"))
