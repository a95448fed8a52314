"""The per-tensor report of a compressed model: rows that print as an aligned table."""

from __future__ import annotations

import math


class Report(list):
    """A list of per-tensor rows (dicts) that prints as an aligned text table.

    Each row has: name, shape, method, bits, sparsity, kept (1 - sparsity), codes_bytes
    (the code stream, or a raw tensor's data), index_bytes (a sparse tensor's gap stream
    and per-row counts), params_bytes (codebook, or scales and zero-points), stored_bytes
    (their sum), original_bytes, ratio, rel_error, sqnr_db, score (the bit allocation's
    score of the chosen bits, None unless a size budget chose them; shown as a column
    only when some tensor has one). Errors are against the weights given to compress
    (None for a pre-quantized tensor given without its float weights). ``str(report)``
    renders the table plus a total line.
    """

    COLUMNS = ("name", "shape", "method", "bits", "kept", "codes_bytes", "index_bytes",
               "params_bytes", "stored_bytes", "ratio", "rel_error", "sqnr_db")
    HEADINGS = {"codes_bytes": "codes B", "index_bytes": "index B", "params_bytes": "params B",
                "stored_bytes": "stored B", "rel_error": "rel err", "sqnr_db": "SQNR dB",
                "score": "alloc score"}

    def __init__(self, rows, total_nbytes: int, original_nbytes: int):
        super().__init__(rows)
        self.total_nbytes = total_nbytes
        self.original_nbytes = original_nbytes

    @staticmethod
    def _cell(key: str, value) -> str:
        if value is None:
            return "-"
        if key == "shape":
            return "x".join(str(d) for d in value) or "()"
        if key in ("sparsity", "kept"):
            return f"{100 * value:.1f}%"
        if key == "ratio":
            return f"{value:.2f}x"
        if key in ("rel_error", "score"):
            return f"{value:.2e}"
        if key == "sqnr_db":
            return "inf" if math.isinf(value) else f"{value:.1f}"
        return str(value)

    def __str__(self) -> str:
        columns = self.COLUMNS + (("score",) if any(r.get("score") is not None
                                                     for r in self) else ())
        table = [[self.HEADINGS.get(k, k) for k in columns]]
        table += [[self._cell(k, row.get(k)) for k in columns] for row in self]
        widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
        lines = []
        for j, r in enumerate(table):
            cells = [c.ljust(w) if i < 3 else c.rjust(w)
                     for i, (c, w) in enumerate(zip(r, widths, strict=True))]
            lines.append("  ".join(cells).rstrip())
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        ratio = self.original_nbytes / self.total_nbytes if self.total_nbytes else float("inf")
        lines.append(f"total: {self.original_nbytes:,} -> {self.total_nbytes:,} bytes "
                     f"({ratio:.2f}x, file size including header and alignment)")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)
