//! `freshet provision`: creates the streams and KV buckets of the topology that are missing and
//! checks the ones that exist. Safe to run any number of times; a stream whose limits (age, bytes,
//! duplicate window) differ from the topology's is updated in place, and a stream or bucket whose
//! structure differs is reported as a conflict and left alone.

use anyhow::Context;
use freshet::topology::{self, Provisioned};
use serde::Serialize;

use super::{GlobalArgs, Table, connect, emit, emit_json};

/// What provisioning did to one stream or bucket, as printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProvisionRow {
    /// "stream" or "bucket".
    pub kind: String,
    pub name: String,
    /// "created", "unchanged" or "updated: <what changed>".
    pub result: String,
}

/// Turns the library's report ("stream EVENTS", Created) into printable rows.
pub fn rows(report: &[(String, Provisioned)]) -> Vec<ProvisionRow> {
    report
        .iter()
        .map(|(what, outcome)| {
            let (kind, name) = what.split_once(' ').unwrap_or(("", what.as_str()));
            ProvisionRow {
                kind: kind.to_string(),
                name: name.to_string(),
                result: match outcome {
                    Provisioned::Created => "created".to_string(),
                    Provisioned::Unchanged => "unchanged".to_string(),
                    Provisioned::Updated(what) => format!("updated: {what}"),
                    Provisioned::LimitsDiffer(what) => format!("limits differ: {what}"),
                },
            }
        })
        .collect()
}

/// Runs `freshet provision`.
pub async fn run(global: &GlobalArgs) -> anyhow::Result<()> {
    let wanted = global.common.topology()?;
    let nats = connect(global).await?;
    // A conflict's message already says what differs and what to do; it is printed as is.
    let report = topology::provision(&nats.js, &wanted, &nats.subjects).await?;
    let rows = rows(&report);
    if global.json {
        return emit_json(&rows);
    }
    let mut table = Table::new(&["KIND", "NAME", "RESULT"]);
    for row in rows {
        let mut result = row.result;
        if let Some(first) = result.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        table.row(vec![row.kind, row.name, result]);
    }
    emit(&table.to_string()).context("printing the provisioning report")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_kind_from_name() {
        let report = vec![
            ("stream EVENTS".to_string(), Provisioned::Created),
            ("bucket MODELS".to_string(), Provisioned::Unchanged),
        ];
        let rows = rows(&report);
        assert_eq!(
            rows[0],
            ProvisionRow {
                kind: "stream".into(),
                name: "EVENTS".into(),
                result: "created".into()
            }
        );
        assert_eq!(
            (rows[1].kind.as_str(), rows[1].result.as_str()),
            ("bucket", "unchanged")
        );
    }
}
