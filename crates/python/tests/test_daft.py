"""mbpipe on Daft (its local runner): `mbpipe.daft.enrich` adds the columns `mbpipe run` writes
for the same rows, value for value. Runs in its own environment: `scripts/test.sh` puts Daft in
target/daft-venv, since Daft pins pyarrow < 26 and the other tests read Parquet with pyarrow 26.
The run's output is read as Arrow IPC here: pyarrow <= 25 cannot read a Parquet fixed-size list
column with null rows (the embeddings of null texts); see the README."""

import glob
import json
import subprocess

import pyarrow as pa
import pytest

from test_tasks import assert_same, corpus  # noqa: F401  (fixture)

daft = pytest.importorskip("daft", reason="SKIPPED: daft is not installed here (scripts/test.sh runs this file in target/daft-venv)")


def _small(t):
    """`t` with Daft's large offsets made regular (Daft keeps every string and list large)."""
    if pa.types.is_large_string(t):
        return pa.string()
    if pa.types.is_large_list(t) or pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_small(t.value_type)))
    if pa.types.is_fixed_size_list(t):
        return pa.list_(t.value_field.with_type(_small(t.value_type)), t.list_size)
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_small(t.field(i).type)) for i in range(t.num_fields)])
    return t


def test_daft_enrich_equals_mbpipe_run(corpus, mbpipe_bin):  # noqa: F811
    import mbpipe.daft

    toml = corpus / "p.toml"
    toml.write_text(toml.read_text().replace("[output]\n", '[output]\nformat = "arrow"\n'))
    subprocess.run([mbpipe_bin, "run", str(toml)], check=True, capture_output=True)
    parts = sorted(glob.glob(str(corpus / "out" / "part-*.arrow")))
    want = pa.concat_tables(pa.ipc.open_file(p).read_all() for p in parts).sort_by("id")
    rows = pa.Table.from_pylist(
        [json.loads(l) for l in open(corpus / "in.jsonl")],
        schema=pa.schema([("id", pa.int64()), ("text", pa.string())]),
    )
    df = daft.from_arrow(rows)
    got = mbpipe.daft.enrich(df, pipeline=str(toml), threads=1, batch_size=16).to_arrow()
    got = got.sort_by("id")
    assert got.num_rows == want.num_rows == 40
    assert got.column_names == want.column_names
    for field in want.schema:
        g = got.schema.field(field.name).type
        # The same types, up to Daft's large offsets.
        assert _small(g) == _small(field.type), f"{field.name}: {g} vs {field.type}"
        assert_same(got.column(field.name).to_pylist(), want.column(field.name).to_pylist(), field.name)
