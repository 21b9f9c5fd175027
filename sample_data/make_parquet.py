#!/usr/bin/env python3
"""Regenerate comments.parquet from comments.jsonl (same rows, same order).

Usage: python3 sample_data/make_parquet.py   (needs `pip install pyarrow`)
"""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
SCHEMA = pa.schema(
    [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("lang", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=True),
    ]
)


def main() -> None:
    src = HERE / "comments.jsonl"
    with src.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    # Two row groups so readers exercise more than one.
    pq.write_table(table, HERE / "comments.parquet", compression="zstd", row_group_size=64)
    print(f"wrote {table.num_rows} rows to {HERE / 'comments.parquet'}")


if __name__ == "__main__":
    main()
