"""mbpipe on Spark, in a local PySpark (`local[2]`, loopback only): `df.mapInArrow` with
`mbpipe.spark.map_in_arrow` gives the rows `mbpipe run` gives for the same input."""

import json
import os
import shutil
import subprocess

import pyarrow.parquet as pq
import pytest

from test_tasks import assert_same, corpus  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def spark():
    pyspark = pytest.importorskip(
        "pyspark", reason="SKIPPED: pyspark is not installed (scripts/test.sh installs it)")
    if shutil.which("java") is None:
        pytest.skip("SKIPPED: no Java runtime for Spark (apt-get install default-jre-headless)")
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
    session = (
        pyspark.sql.SparkSession.builder.master("local[2]")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.executorEnv.PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        .getOrCreate()
    )
    yield session
    session.stop()


def test_spark_map_in_arrow_equals_mbpipe_run(corpus, mbpipe_bin, spark):  # noqa: F811
    import mbpipe.spark

    subprocess.run([mbpipe_bin, "run", str(corpus / "p.toml")], check=True, capture_output=True)
    want = pq.read_table(corpus / "out").sort_by("id")
    rows = [json.loads(l) for l in open(corpus / "in.jsonl")]
    df = spark.createDataFrame(rows, "id long, text string").repartition(2)
    fn, schema = mbpipe.spark.map_in_arrow(df.schema, pipeline=str(corpus / "p.toml"), threads=1)
    out = df.mapInArrow(fn, schema)
    out.write.parquet(str(corpus / "spark_out"))
    got = pq.read_table(corpus / "spark_out").sort_by("id")
    assert got.num_rows == want.num_rows == 40
    assert got.column_names == want.column_names
    for name in want.column_names:
        assert_same(got.column(name).to_pylist(), want.column(name).to_pylist(), name)
