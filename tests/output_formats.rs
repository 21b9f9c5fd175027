//! `[output] format = "arrow"`: Arrow IPC part files with the same rows, types and values as the
//! Parquet output of the same pipeline, readable by `mbpipe sql`.

use std::path::Path;

use arrow::record_batch::RecordBatch;

use crate::util::{fixture, mbpipe, ok};

fn concat(batches: Vec<RecordBatch>) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn read_parts(dir: &Path, ext: &str) -> RecordBatch {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no .{ext} parts in {}", dir.display());
    let mut batches = Vec::new();
    for p in names {
        let f = std::fs::File::open(p).unwrap();
        if ext == "arrow" {
            let r = arrow::ipc::reader::FileReader::try_new(f, None).unwrap();
            batches.extend(r.map(|b| b.unwrap()));
        } else {
            let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
                .unwrap()
                .build()
                .unwrap();
            batches.extend(r.map(|b| b.unwrap()));
        }
    }
    concat(batches)
}

#[test]
fn arrow_ipc_output_equals_parquet_output() {
    let Some(fx) = fixture() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let lines: String = fx
        .texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "text": t}).to_string() + "\n")
        .chain(std::iter::once("{\"id\":99,\"text\":null}\n".to_string()))
        .collect();
    std::fs::write(d.join("in.jsonl"), lines).unwrap();
    for (name, format) in [("pq", "parquet"), ("ipc", "arrow")] {
        let toml = format!(
            "[input]\npath = \"in.jsonl\"\ntext = \"text\"\n\n[output]\npath = \"{name}\"\nformat = \"{format}\"\npart_rows = 5\n\n\
             [[tasks]]\nname = \"s\"\nkind = \"classify\"\nmodel = \"{cls}\"\n\n\
             [[tasks]]\nname = \"e\"\nkind = \"embed\"\nmodel = \"{mlm}\"\n\n\
             [[tasks]]\nname = \"f\"\nkind = \"fill_mask\"\nmodel = \"{mlm}\"\ntop_k = 3\n",
            cls = fx.model("classifier"),
            mlm = fx.model("mlm"),
        );
        std::fs::write(d.join(format!("{name}.toml")), toml).unwrap();
        ok(mbpipe(d, &["run", &format!("{name}.toml")]));
    }
    let parquet = read_parts(&d.join("pq"), "parquet");
    let ipc = read_parts(&d.join("ipc"), "arrow");
    assert_eq!(ipc.num_rows(), fx.texts.len() + 1);
    assert_eq!(ipc.schema(), parquet.schema());
    for (i, (a, b)) in ipc.columns().iter().zip(parquet.columns()).enumerate() {
        assert_eq!(
            a.as_ref(),
            b.as_ref(),
            "column {}",
            ipc.schema().field(i).name()
        );
    }
    let csv = ok(mbpipe(
        d,
        &[
            "sql",
            "--table",
            "t=ipc",
            "--format",
            "csv",
            "SELECT count(*) AS n, count(s_label) AS l FROM t",
        ],
    ));
    assert_eq!(
        csv.lines().nth(1),
        Some(format!("{},{}", fx.texts.len() + 1, fx.texts.len()).as_str())
    );
}
