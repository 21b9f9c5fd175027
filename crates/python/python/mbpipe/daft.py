"""mbpipe on Daft: the task columns added to a DataFrame by a Daft class.

    import daft, mbpipe.daft
    df = daft.read_parquet("s3://corpus/comments/")
    out = mbpipe.daft.enrich(df, pipeline="moderation.toml")   # or tasks=[...], text="body"
    out.write_parquet("s3://results/moderation/")

Each instance of the class (`max_concurrency` of them; GPUs: `gpus=1`, `device="cuda:0"`)
loads the models once and runs mbpipe's packed, padding-free inference on the batches Daft
gives it. The input columns stay as Daft has them; the task columns are the ones `mbpipe run`
writes, with the same names, types and values.
"""

import pyarrow as pa

import mbpipe


def _load(pipeline, tasks, text, kwargs):
    if pipeline is not None:
        return mbpipe.Tasks.from_pipeline(pipeline, **kwargs)
    return mbpipe.Tasks(tasks, text, **kwargs)


def task_fields(input_schema, pipeline=None, tasks=None, text="text", **kwargs):
    """The task columns (Arrow fields) mbpipe adds to rows of `input_schema` (a pyarrow schema)."""
    out = _load(pipeline, tasks, text, kwargs).output_schema(input_schema)
    return [f for f in out if f.name not in input_schema.names]


def enrich(df, pipeline=None, tasks=None, text="text", gpus=0, max_concurrency=None,
           batch_size=None, **kwargs):
    """`df` with the task columns of a pipeline file (its `[[tasks]]` and `[input] text`) or of
    `tasks` over the `text` template added; `kwargs` (device, dtype, threads,
    max_batch_tokens) as for `mbpipe.Tasks`. The pipeline's `[input] query` and `keep` do not
    apply: Daft keeps every row and column (filter with `df.where` first)."""
    import daft

    names = df.column_names
    arrow_in = df.schema().to_pyarrow_schema()
    fields = task_fields(arrow_in, pipeline, tasks, text, **kwargs)
    out_type = pa.struct(fields)

    @daft.cls(gpus=gpus, max_concurrency=max_concurrency, name_override="mbpipe")
    class _Enrich:
        def __init__(self):
            self._tasks = _load(pipeline, tasks, text, kwargs)

        @daft.method.batch(return_dtype=daft.DataType.from_arrow_type(out_type), unnest=True,
                           batch_size=batch_size)
        def __call__(self, *columns):
            table = pa.Table.from_arrays([c.to_arrow() for c in columns], schema=arrow_in)
            out = self._tasks(table)
            return pa.StructArray.from_arrays(
                [out.column(f.name).combine_chunks() for f in fields], fields=fields)

    columns = [df[n] for n in names]
    return df.select(*columns, _Enrich()(*columns))
