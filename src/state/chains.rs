//! Reads of many units' runs at once (provenance's attempt chains).

use super::{Result, RunRow, Store};

impl Store {
    /// Every run of these units, oldest first, in one query.
    pub fn runs_of_units(&self, unit_ids: &[i64]) -> Result<Vec<RunRow>> {
        if unit_ids.is_empty() {
            return Ok(Vec::new());
        }
        let list = unit_ids
            .iter()
            .map(i64::to_string)
            .collect::<Vec<_>>()
            .join(",");
        self.query_runs(&format!("WHERE r.unit_id IN ({list})"), &[])
    }
}
