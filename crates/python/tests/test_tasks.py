"""The Python package against the CLI: `Tasks(batch)` adds the same columns, with the same
names, types and values, as `mbpipe run` writes for the same rows (labels exactly, floats within
1e-5: batches may be packed differently; the engine itself is held to transformers at 1e-4 by
the Rust parity tests)."""

import json
import math
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mbpipe

FLOAT_TOL = 1e-5


def pipeline_toml(fixture_dir, inp, out):
    return f"""[input]
path = "{inp}"
text = "text"

[output]
path = "{out}"

[[tasks]]
name = "sentiment"
kind = "classify"
model = "{fixture_dir / 'classifier'}"

[[tasks]]
name = "emb"
kind = "embed"
model = "{fixture_dir / 'mlm'}"

[[tasks]]
name = "fill"
kind = "fill_mask"
model = "{fixture_dir / 'mlm'}"
top_k = 3
"""


@pytest.fixture()
def corpus(tmp_path, fixture_dir):
    texts = [json.loads(l)["text"] for l in open(fixture_dir / "texts.jsonl") if l.strip()]
    rows = [{"id": i, "text": texts[i % len(texts)] if i % 7 else None} for i in range(40)]
    rows[3]["text"] = "The weather was [MASK] today."
    with open(tmp_path / "in.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    (tmp_path / "p.toml").write_text(pipeline_toml(fixture_dir, tmp_path / "in.jsonl", tmp_path / "out"))
    return tmp_path


def assert_same(got, want, at="value"):
    if isinstance(want, float) or isinstance(got, float):
        assert (got is None) == (want is None), at
        if want is not None:
            assert math.isclose(got, want, abs_tol=FLOAT_TOL), f"{at}: {got} vs {want}"
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), at
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{at}[{i}]")
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), at
        for k in want:
            assert_same(got[k], want[k], f"{at}.{k}")
    else:
        assert got == want, f"{at}: {got!r} vs {want!r}"


def test_tasks_add_the_columns_mbpipe_run_writes(corpus, mbpipe_bin):
    subprocess.run([mbpipe_bin, "run", str(corpus / "p.toml")], check=True, capture_output=True)
    want = pq.read_table(corpus / "out")
    rows = pa.Table.from_pylist(
        [json.loads(l) for l in open(corpus / "in.jsonl")],
        schema=pa.schema([("id", pa.int64()), ("text", pa.string())]),
    )
    tasks = mbpipe.Tasks.from_pipeline(corpus / "p.toml")
    got = tasks(rows)
    assert isinstance(got, pa.Table)
    assert got.schema == want.schema
    assert got.num_rows == want.num_rows == 40
    for name in want.column_names:
        assert_same(got.column(name).to_pylist(), want.column(name).to_pylist(), name)
    # A null text gives null task columns; the fill-mask row has its predictions.
    assert got.column("sentiment_label")[0].as_py() is None
    assert len(got.column("fill_predictions")[3].as_py()) == 1

    # A record batch in, a record batch out; an empty table keeps the output schema.
    batch = rows.to_batches()[0].slice(0, 5)
    one = tasks(batch)
    assert isinstance(one, pa.RecordBatch) and one.num_rows == 5
    assert_same(one.column(2).to_pylist(), want.column(2).to_pylist()[:5], "batch")
    empty = tasks(rows.schema.empty_table())
    assert empty.num_rows == 0 and empty.schema == want.schema


def test_tasks_from_dicts_equal_tasks_from_the_pipeline_file(corpus, fixture_dir):
    rows = pa.table({"body": ["great film", "awful", None]})
    tasks = mbpipe.Tasks(
        [{"name": "sentiment", "kind": "classify", "model": str(fixture_dir / "classifier")}],
        text="body",
    )
    out = tasks(rows)
    assert out.column_names == ["body", "sentiment_label", "sentiment_score", "sentiment_scores",
                                "sentiment_truncated"]
    from_file = mbpipe.Tasks.from_pipeline(corpus / "p.toml")(
        pa.table({"id": [1, 2, 3], "text": ["great film", "awful", None]}))
    assert_same(out.column("sentiment_scores").to_pylist(),
                from_file.column("sentiment_scores").to_pylist(), "scores")


def test_a_quantized_task_gives_what_dtype_int8_gives(fixture_dir):
    """`quantize = "int8"` on one task of an f32 `Tasks`: exactly the columns an int8 `Tasks`
    writes for it, while the plain task keeps the f32 values."""
    rows = pa.table({"text": ["great film", "awful, just awful", None, "it was fine"]})
    model = str(fixture_dir / "classifier")
    plain = {"name": "s", "kind": "classify", "model": model}
    mixed = mbpipe.Tasks([plain, {**plain, "name": "q", "quantize": "int8"}])(rows)
    f32 = mbpipe.Tasks([plain])(rows)
    int8 = mbpipe.Tasks([plain], dtype="int8")(rows)
    for suffix in ["label", "score", "scores", "truncated"]:
        assert mixed.column(f"s_{suffix}").equals(f32.column(f"s_{suffix}")), suffix
        assert mixed.column(f"q_{suffix}").equals(int8.column(f"s_{suffix}")), suffix
    assert not mixed.column("q_scores").equals(mixed.column("s_scores"))


def test_errors_are_python_exceptions_with_the_cli_messages(fixture_dir, tmp_path):
    with pytest.raises(ValueError, match="kind"):
        mbpipe.Tasks([{"name": "t", "kind": "nope", "model": str(fixture_dir / "mlm")}])
    with pytest.raises(ValueError, match="missing-model"):
        mbpipe.Tasks([{"name": "t", "kind": "embed", "model": str(tmp_path / "missing-model")}])
    tasks = mbpipe.Tasks([{"name": "t", "kind": "embed", "model": str(fixture_dir / "mlm")}],
                         text="body")
    with pytest.raises(ValueError, match="body"):
        tasks(pa.table({"text": ["no body column"]}))


def test_run_is_the_cli_run(corpus):
    summary = mbpipe.run(corpus / "p.toml")
    assert summary["rows"] == 40 and summary["rejected"] == 0 and not summary["already_complete"]
    assert (corpus / "out" / "_SUCCESS").exists()
    assert mbpipe.run(corpus / "p.toml")["already_complete"]
    with pytest.raises(ValueError, match="shard"):
        mbpipe.run(corpus / "p.toml", shard="9/2")
