//! `[input] query`: DataFusion SQL over each input batch, limited to what keeps input order.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::PipelineError;

/// A checked row-wise query (filters and computed columns only).
pub struct InputQuery {
    sql: String,
    input_schema: SchemaRef,
    output_schema: SchemaRef,
    runtime: tokio::runtime::Runtime,
}

impl InputQuery {
    /// Plans the query against the input schema; anything that aggregates, joins, sorts or
    /// limits is rejected, since output rows must stay in input order, one per input row at most.
    pub fn new(sql: &str, input_schema: SchemaRef) -> Result<Self, PipelineError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|source| PipelineError::Start {
                what: "query runtime",
                source,
            })?;
        let ctx = context(&input_schema, Vec::new())?;
        let plan = runtime
            .block_on(async { ctx.sql(sql).await?.into_optimized_plan() })
            .map_err(|e| PipelineError::Invalid(format!("[input] query: {e}")))?;
        check_row_wise(&plan)?;
        let output_schema = Arc::new(plan.schema().as_arrow().clone());
        Ok(InputQuery {
            sql: sql.to_string(),
            input_schema,
            output_schema,
            runtime,
        })
    }

    /// Schema of the query's result.
    pub fn output_schema(&self) -> SchemaRef {
        self.output_schema.clone()
    }

    /// Runs the query over one batch, keeping row order.
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch, PipelineError> {
        let ctx = context(&self.input_schema, vec![batch])?;
        let batches = self
            .runtime
            .block_on(async { ctx.sql(&self.sql).await?.collect().await })
            .map_err(|e| PipelineError::Query(e.to_string()))?;
        Ok(arrow::compute::concat_batches(
            &self.output_schema,
            &batches,
        )?)
    }
}

fn context(schema: &SchemaRef, batches: Vec<RecordBatch>) -> Result<SessionContext, PipelineError> {
    // One partition keeps rows in order through filters and projections.
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let table = MemTable::try_new(schema.clone(), vec![batches])
        .map_err(|e| PipelineError::Query(e.to_string()))?;
    ctx.register_table("input", Arc::new(table))
        .map_err(|e| PipelineError::Query(e.to_string()))?;
    Ok(ctx)
}

fn check_row_wise(plan: &LogicalPlan) -> Result<(), PipelineError> {
    let ok = matches!(
        plan,
        LogicalPlan::Projection(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::TableScan(_)
            | LogicalPlan::SubqueryAlias(_)
    );
    if !ok {
        return Err(PipelineError::Invalid(format!(
            "[input] query may only filter rows and compute columns (SELECT ... FROM input WHERE ...), \
             since the output keeps input order; it uses {}",
            plan.display()
        )));
    }
    for input in plan.inputs() {
        check_row_wise(input)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("lang", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![3, 1, 2])),
                Arc::new(StringArray::from(vec!["en", "de", "en"])),
            ],
        )
        .unwrap()
    }

    #[test]
    fn filters_keep_input_order() {
        let b = batch();
        let q = InputQuery::new(
            "SELECT id, upper(lang) AS l FROM input WHERE lang = 'en'",
            b.schema(),
        )
        .unwrap();
        let out = q.apply(b).unwrap();
        let ids = out.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[3, 2]);
    }

    #[test]
    fn aggregates_and_sorts_are_rejected() {
        for sql in [
            "SELECT lang, count(*) FROM input GROUP BY lang",
            "SELECT * FROM input ORDER BY id",
            "SELECT * FROM input LIMIT 1",
        ] {
            let err = InputQuery::new(sql, batch().schema())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains("may only filter rows"), "{sql}: {err}");
        }
    }
}
