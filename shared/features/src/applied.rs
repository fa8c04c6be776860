//! The exactly-once bookkeeping every entity state carries: per partition, the highest stream
//! sequence already applied to it. A redelivered event at or below that mark is recognised and
//! not counted twice. The bookstore's states and the spec engine's keep it alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Highest stream sequence applied, per partition: the exactly-once bookkeeping of one entity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied(BTreeMap<u32, u64>);

impl Applied {
    /// Whether the event at `sequence` of `partition` has already been applied.
    pub fn contains(&self, partition: u32, sequence: u64) -> bool {
        self.0.get(&partition).is_some_and(|&mark| sequence <= mark)
    }

    pub fn record(&mut self, partition: u32, sequence: u64) {
        let mark = self.0.entry(partition).or_insert(0);
        *mark = (*mark).max(sequence);
    }
}
