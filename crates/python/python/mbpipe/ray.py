"""mbpipe on Ray Data: a callable class for `Dataset.map_batches`.

    import ray, mbpipe.ray
    ds = ray.data.read_parquet("s3://corpus/comments/")
    out = ds.map_batches(
        mbpipe.ray.Tasks,
        fn_constructor_kwargs={"pipeline": "moderation.toml"},   # or tasks=[...], text="body"
        batch_format="pyarrow",
        concurrency=8,            # actors; each loads the models once
        num_cpus=16,              # cores per actor (pass threads=16 too); GPUs: num_gpus=1,
    )                             # fn_constructor_kwargs={..., "device": "cuda:0", "dtype": "bf16"}
    out.write_parquet("s3://results/moderation/")

Ray places the actors and retries failed tasks; each actor runs mbpipe's packed,
padding-free inference on the batches it is given.
"""

import mbpipe


class Tasks:
    """`mbpipe.Tasks` as a Ray Data actor: models load in the constructor, once per actor."""

    def __init__(self, pipeline=None, tasks=None, text="text", **kwargs):
        if pipeline is not None:
            self._tasks = mbpipe.Tasks.from_pipeline(pipeline, **kwargs)
        else:
            self._tasks = mbpipe.Tasks(tasks, text, **kwargs)

    def __call__(self, batch):
        return self._tasks(batch)
