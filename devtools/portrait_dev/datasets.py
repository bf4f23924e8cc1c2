"""Real public purchase logs installed from the package registries, as CSV exports for ``replay``
and ``evaluate`` (columns ``user,date,amount``: ``--map user=user_id,date=ts``).

* **CDNOW** (shipped by the ``lifetimes`` package, the ``evaluation`` extra): every purchase of the
  23,570 customers who made their first CDNOW purchase in the first quarter of 1997, until June
  1998 (69,659 purchases; ``CDNOW_master.txt``), and the 1/10 sample of those customers
  (2,357 customers, 6,919 purchases; ``CDNOW_sample.txt``). Dates are days; one row per purchase
  (several on a day stay separate rows).
* **lifetimes' example transactions** (``example_transactions.csv``, same package): 15,273
  purchases of 5,000 customers in 2014, without amounts (written as 1.00). The package does not say
  where it comes from; treat it as a second, likely simulated, log.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from stream.offline.btyd import INSTALL_HINT, MissingExtra

CDNOW_MAP = "user=user_id,date=ts"


def _lifetimes_data(name: str) -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or spec.origin is None:
        raise MissingExtra(INSTALL_HINT)
    return Path(spec.origin).parent / "datasets" / name


def cdnow_rows(full: bool = False) -> list[tuple[str, str, str]]:
    """(customer, ISO date, amount) of every CDNOW purchase, in file order."""
    if full:
        path, id_col, date_col, amount_col, skip = _lifetimes_data("CDNOW_master.txt"), 0, 1, 3, 1
    else:
        path, id_col, date_col, amount_col, skip = _lifetimes_data("CDNOW_sample.txt"), 0, 2, 4, 0
    rows = []
    with path.open() as f:
        for index, line in enumerate(f):
            parts = line.split()
            if index < skip or not parts:
                continue
            day = parts[date_col]
            rows.append((f"c{parts[id_col]}", f"{day[:4]}-{day[4:6]}-{day[6:]}", parts[amount_col]))
    return rows


def write_cdnow(out: Path, full: bool = False, customers: int | None = None) -> Path:
    """Write CDNOW as ``user,date,amount`` CSV; ``customers`` keeps the first N customer ids
    (sorted), a deterministic subset. Returns ``out``."""
    rows = cdnow_rows(full)
    if customers is not None:
        kept = set(sorted({r[0] for r in rows})[:customers])
        rows = [r for r in rows if r[0] in kept]
    return _write_rows(out, rows)


def write_lifetimes_example(out: Path) -> Path:
    """Write lifetimes' example transactions as ``user,date,amount`` CSV (amount 1.00). Returns ``out``."""
    path = _lifetimes_data("example_transactions.csv")
    with path.open() as f:
        rows = [(f"x{r['id']}", r["date"][:10], "1.00") for r in csv.DictReader(f)]
    return _write_rows(out, rows)


def _write_rows(out: Path, rows: list[tuple[str, str, str]]) -> Path:
    """``rows`` as ``user,date,amount`` CSV at ``out`` (its folder created). Returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["user", "date", "amount"])
        writer.writerows(rows)
    return out
