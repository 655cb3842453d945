//! Recording rules (`rules/recording.go`): a rule's result renamed and
//! relabelled, written back as new series.

use std::collections::HashSet;

use super::rulefmt::RuleSpec;
use super::RuleError;
use crate::promql::{Sample, METRIC_NAME};

/// The series a recording rule writes for its result `vector` at `t`
/// (`RecordingRule.Eval`); more than `limit` (0: none) is an error.
pub(crate) fn eval(
    rule: &RuleSpec,
    vector: Vec<Sample>,
    t: i64,
    limit: u64,
) -> Result<Vec<Sample>, RuleError> {
    let mut out = Vec::with_capacity(vector.len());
    let mut seen = HashSet::new();
    for s in vector {
        let mut labels = s.labels;
        labels.set(METRIC_NAME.into(), rule.name.clone());
        for (k, v, _) in &rule.labels {
            labels.set(k.clone(), v.clone());
        }
        if !seen.insert(labels.clone()) {
            return Err(RuleError::DuplicateLabelset(
                "vector contains metrics with the same labelset after applying rule labels",
            ));
        }
        out.push(Sample { labels, t, v: s.v });
    }
    if limit > 0 && out.len() as u64 > limit {
        return Err(RuleError::Limit {
            limit,
            got: out.len() as u64,
            what: "series",
        });
    }
    Ok(out)
}
