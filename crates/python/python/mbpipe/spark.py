"""mbpipe on Spark: a function for `DataFrame.mapInArrow`.

    import mbpipe.spark
    fn, schema = mbpipe.spark.map_in_arrow(df.schema, pipeline="moderation.toml")
    out = df.mapInArrow(fn, schema)

Each Python worker loads the models once (on its first batch) and keeps them for the
following batches and tasks. Pass `threads=` to match `spark.task.cpus`. Embeddings arrive as
Spark arrays (Arrow lists; Spark has no fixed-size list), every other column as `mbpipe run`
writes it.
"""


import pyarrow as pa

import mbpipe

_loaded = {}


def _spark_type(t):
    """`t` with every fixed-size list made a plain list: Spark's ArrayType is an Arrow list, and
    Spark refuses FixedSizeList (mbpipe's embedding columns) at run time."""
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(t.value_field.with_type(_spark_type(t.value_type)))
    if pa.types.is_struct(t):
        return pa.struct([t.field(i).with_type(_spark_type(t.field(i).type))
                          for i in range(t.num_fields)])
    return t


def arrow_schema_for_spark(schema):
    """The Arrow schema of mbpipe's output as Spark can take it (fixed-size lists as lists)."""
    return pa.schema([f.with_type(_spark_type(f.type)) for f in schema], schema.metadata)


def _tasks(key, pipeline, tasks, text, kwargs):
    if key not in _loaded:
        if pipeline is not None:
            _loaded[key] = mbpipe.Tasks.from_pipeline(pipeline, **kwargs)
        else:
            _loaded[key] = mbpipe.Tasks(tasks, text, **kwargs)
    return _loaded[key]


def map_in_arrow(spark_schema, pipeline=None, tasks=None, text="text", **kwargs):
    """`(fn, output_schema)` for `df.mapInArrow(fn, output_schema)` over rows of `spark_schema`."""
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema

    key = repr((pipeline, tasks, text, sorted(kwargs.items())))
    arrow_in = to_arrow_schema(spark_schema)
    arrow_out = arrow_schema_for_spark(_tasks(key, pipeline, tasks, text, kwargs).output_schema(arrow_in))

    def fn(batches):
        t = _tasks(key, pipeline, tasks, text, kwargs)
        for batch in batches:
            yield t(batch).cast(arrow_out)

    return fn, from_arrow_schema(arrow_out)
