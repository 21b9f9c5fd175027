"""mbpipe on Ray Data, on a local Ray cluster (127.0.0.1, 2 CPUs): `map_batches(mbpipe.ray.Tasks)`
over Parquet gives the rows `mbpipe run` gives for the same input, value for value."""

import json
import os
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_tasks import assert_same, corpus  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="SKIPPED: ray is not installed (scripts/test.sh installs it)")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}},
        log_to_driver=False,
    )
    yield ray
    ray.shutdown()


def test_ray_data_map_batches_equals_mbpipe_run(corpus, mbpipe_bin, ray_cluster):  # noqa: F811
    import mbpipe.ray

    ray = ray_cluster
    subprocess.run([mbpipe_bin, "run", str(corpus / "p.toml")], check=True, capture_output=True)
    want = pq.read_table(corpus / "out").sort_by("id")
    rows = pa.Table.from_pylist(
        [json.loads(l) for l in open(corpus / "in.jsonl")],
        schema=pa.schema([("id", pa.int64()), ("text", pa.string())]),
    )
    pq.write_table(rows, corpus / "in.parquet", row_group_size=10)

    ds = ray.data.read_parquet(str(corpus / "in.parquet"))
    out = ds.map_batches(
        mbpipe.ray.Tasks,
        fn_constructor_kwargs={"pipeline": str(corpus / "p.toml"), "threads": 1},
        batch_format="pyarrow",
        batch_size=16,
        concurrency=1,
        num_cpus=1,
    )
    out.write_parquet(str(corpus / "ray_out"))
    got = pq.read_table(corpus / "ray_out").sort_by("id")
    assert got.num_rows == want.num_rows == 40
    assert got.column_names == want.column_names
    for name in want.column_names:
        assert_same(got.column(name).to_pylist(), want.column(name).to_pylist(), name)
