//! `nodewatch query --range DURATION [--step DURATION]`: one instant query
//! per step over the last `DURATION` (up to `--time`), printed as a table,
//! as Prometheus' range-query JSON (`-o json`), or, on a terminal, as a
//! compact line chart per series.

use std::collections::BTreeMap;
use std::io::Write;

use nodewatch_proto::v1::query_client::QueryClient;
use nodewatch_proto::v1::QueryRequest;
use serde_json::{json, Value};
use tonic::transport::Channel;

use super::output::Format;

/// Most points per series, as Prometheus' range queries allow.
pub const MAX_POINTS: i64 = 11_000;

/// Steps of a `--range` query: `end - range` to `end`, `step` apart; the
/// default step gives about 60 points, never under a second.
pub fn steps(end_ms: i64, range_ms: i64, step_ms: Option<i64>) -> anyhow::Result<Vec<i64>> {
    anyhow::ensure!(range_ms > 0, "--range must be positive");
    let step = step_ms.unwrap_or_else(|| (range_ms / 60).max(1000));
    anyhow::ensure!(step > 0, "--step must be positive");
    anyhow::ensure!(
        range_ms / step < MAX_POINTS,
        "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (--step)"
    );
    let start = end_ms - range_ms;
    Ok((0..=range_ms / step).map(|i| start + i * step).collect())
}

/// One series of the answer: `(t_ms, value)` per step it had a value.
type Matrix = BTreeMap<Vec<(String, String)>, Vec<(i64, f64)>>;

/// Runs the instant queries.
pub async fn query(
    client: &mut QueryClient<Channel>,
    expr: &str,
    times: &[i64],
) -> anyhow::Result<Matrix> {
    let mut out: Matrix = BTreeMap::new();
    for &t in times {
        let r = client
            .query(QueryRequest {
                expr: expr.to_string(),
                time_ms: t,
            })
            .await?
            .into_inner();
        match r.result_type.as_str() {
            "vector" => {
                for s in r.vector {
                    let labels = s.labels.into_iter().map(|l| (l.name, l.value)).collect();
                    out.entry(labels).or_default().push((t, s.value));
                }
            }
            "scalar" => out.entry(Vec::new()).or_default().push((t, r.scalar)),
            other => anyhow::bail!("a range query needs a vector or scalar, got a {other}"),
        }
    }
    Ok(out)
}

fn labels_text(labels: &[(String, String)]) -> String {
    let name = labels
        .iter()
        .find(|l| l.0 == "__name__")
        .map_or("", |l| l.1.as_str());
    let rest: Vec<String> = labels
        .iter()
        .filter(|l| l.0 != "__name__")
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{name}{{{}}}", rest.join(", "))
}

/// A one-line chart of `values` scaled between their minimum and maximum;
/// steps without a value are blank.
#[must_use]
pub fn sparkline(points: &[(i64, f64)], times: &[i64]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let finite = points.iter().map(|p| p.1).filter(|v| v.is_finite());
    let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let mut by_t = points.iter().peekable();
    times
        .iter()
        .map(|&t| {
            while by_t.peek().is_some_and(|p| p.0 < t) {
                by_t.next();
            }
            match by_t.peek() {
                Some(p) if p.0 == t && p.1.is_finite() => {
                    let frac = if hi > lo { (p.1 - lo) / (hi - lo) } else { 0.5 };
                    // In 0..=7 by construction.
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    let i = (frac * 7.0).round().clamp(0.0, 7.0) as usize;
                    BARS[i]
                }
                Some(p) if p.0 == t => '?',
                _ => ' ',
            }
        })
        .collect()
}

/// Prints the answer.
pub fn print(
    out: &mut impl Write,
    m: &Matrix,
    times: &[i64],
    format: Format,
    chart: bool,
) -> anyhow::Result<()> {
    let fmt = nodewatch_proto::text::fmt_value;
    match format {
        Format::Json => {
            let result: Vec<Value> = m
                .iter()
                .map(|(labels, points)| {
                    let metric: serde_json::Map<String, Value> = labels
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                        .collect();
                    json!({
                        "metric": metric,
                        "values": points.iter().map(|&(t, v)| json!([t as f64 / 1000.0, fmt(v)])).collect::<Vec<_>>(),
                    })
                })
                .collect();
            writeln!(out, "{}", json!({"resultType": "matrix", "result": result}))?;
        }
        Format::Table if chart => {
            for (labels, points) in m {
                let (lo, hi, last) = points.iter().fold(
                    (f64::INFINITY, f64::NEG_INFINITY, f64::NAN),
                    |(lo, hi, _), p| (lo.min(p.1), hi.max(p.1), p.1),
                );
                writeln!(out, "{}", labels_text(labels))?;
                writeln!(
                    out,
                    "  {}  min {} max {} last {}",
                    sparkline(points, times),
                    fmt(lo),
                    fmt(hi),
                    fmt(last)
                )?;
            }
        }
        Format::Table => {
            for (labels, points) in m {
                writeln!(out, "{}", labels_text(labels))?;
                for &(t, v) in points {
                    writeln!(out, "  {}  {}", super::output::rfc3339(t), fmt(v))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_cover_the_range() {
        assert_eq!(
            steps(10_000, 4_000, Some(2_000)).unwrap(),
            vec![6_000, 8_000, 10_000]
        );
        assert_eq!(steps(600_000, 600_000, None).unwrap().len(), 61);
        assert!(steps(0, 100_000_000, Some(1)).is_err());
        assert!(steps(0, 0, None).is_err());
    }

    #[test]
    fn sparkline_scales_and_leaves_gaps() {
        let times = [0, 1, 2, 3];
        assert_eq!(sparkline(&[(0, 1.0), (1, 2.0), (3, 3.0)], &times), "▁▅ █");
        assert_eq!(sparkline(&[(0, 5.0), (1, 5.0)], &times), "▅▅  ");
    }
}
