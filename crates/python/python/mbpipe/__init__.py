"""mbpipe from Python: a pipeline's ModernBERT tasks over Arrow batches, and `mbpipe run`.

    import mbpipe
    tasks = mbpipe.Tasks.from_pipeline("pipelines/moderation.toml")   # [[tasks]] + [input] text
    # or: mbpipe.Tasks([{"name": "toxicity", "kind": "classify", "model": "..."}], text="body")
    out = tasks(batch)              # pyarrow RecordBatch or Table in, the same rows out with the
                                    # task columns added, exactly as `mbpipe run` writes them
    mbpipe.run("pipelines/moderation.toml", shard=(0, 8))

Models load once, when `Tasks` is made, and are reused for every batch; the GIL is released
while they run. Errors are `ValueError` (the pipeline, its columns or its model files are wrong)
or `RuntimeError`, with the CLI's messages.
"""

import json

import pyarrow as pa

from . import _native

__all__ = ["Tasks", "run"]
__version__ = _native.__version__


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) into a pipeline")


def _pipeline_toml(tasks, text, query, keep):
    lines = ["[input]", 'path = "python"', f"text = {_toml_value(text)}"]
    if query is not None:
        lines.append(f"query = {_toml_value(query)}")
    if keep is not None:
        lines.append(f"keep = {_toml_value(list(keep))}")
    lines += ["", "[output]", 'path = "python"']
    for task in tasks:
        lines += ["", "[[tasks]]"]
        lines += [f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in task.items()]
    return "\n".join(lines) + "\n"


class Tasks:
    """A pipeline's tasks on loaded models; call it on a pyarrow RecordBatch or Table.

    `tasks` are `[[tasks]]` tables of a pipeline file as dicts; `text`, `query` and `keep` are
    its `[input]` keys. `device`, `dtype`, `threads` and `max_batch_tokens` are the CLI's flags.
    """

    def __init__(self, tasks=None, text="text", *, query=None, keep=None, device="cpu",
                 dtype="f32", threads=None, max_batch_tokens=None, _source=None):
        source = _source if _source is not None else _pipeline_toml(tasks or [], text, query, keep)
        self._native = _native.Tasks(source, device=device, dtype=dtype, threads=threads,
                                     max_batch_tokens=max_batch_tokens)

    @classmethod
    def from_pipeline(cls, path, **kwargs):
        """The `[input]` text/query/keep and `[[tasks]]` of a pipeline file (its paths unused)."""
        with open(path, encoding="utf-8") as f:
            return cls(_source=f.read(), **kwargs)

    def __call__(self, data):
        """`data` (RecordBatch or Table) with the task columns added, of the same type."""
        if isinstance(data, pa.Table):
            batches = [self._apply(b) for b in data.to_batches()]
            if not batches:
                return self.output_schema(data.schema).empty_table()
            return pa.Table.from_batches(batches)
        return self._apply(data)

    def output_schema(self, input_schema):
        """The schema of the rows this returns for input rows of `input_schema`."""
        return self._apply(pa.RecordBatch.from_pylist([], schema=input_schema)).schema

    def _apply(self, batch):
        schema, array = batch.__arrow_c_array__()
        return pa.RecordBatch._import_from_c_capsule(*self._native.apply(schema, array))


def run(pipeline, *, shard=None, overwrite=False, device="cpu", dtype="f32", threads=None,
        max_batch_tokens=None):
    """`mbpipe run PIPELINE`: returns {"rows", "rejected", "tokens", "already_complete"}.

    `shard` is `(i, n)` or the CLI's `"i/n"` / `"auto/n"`.
    """
    if isinstance(shard, tuple):
        shard = f"{shard[0]}/{shard[1]}"
    return _native.run(str(pipeline), shard=shard, overwrite=overwrite, device=device,
                       dtype=dtype, threads=threads, max_batch_tokens=max_batch_tokens)
