//! What the evaluator implements, checked before evaluation so that a rule
//! file using anything else is refused when it loads rather than failing at
//! every evaluation.

use promql_parser::parser::token::{T_LIMITK, T_LIMIT_RATIO};
use promql_parser::parser::Expr;

use super::functions::lookup;

/// A construct the evaluator refuses, named so the user can find it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// A function outside [`supported_functions`](super::supported_functions).
    #[error("unsupported function \"{0}\"")]
    Function(String),
    /// An aggregation operator such as `limitk`.
    #[error("unsupported aggregation \"{0}\"")]
    Aggregation(String),
    /// `{a="1" or b="2"}`.
    #[error("\"or\" inside label matchers is not supported")]
    OrMatchers,
    /// `fill`, `fill_left`, `fill_right` binary modifiers.
    #[error("fill modifiers of binary operators are not supported")]
    Fill,
    /// Parser extensions.
    #[error("extension expressions are not supported")]
    Extension,
}

/// Walks `expr` and returns the first construct the evaluator refuses.
pub fn check_supported(expr: &Expr) -> Result<(), Unsupported> {
    match expr {
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::Paren(p) => check_supported(&p.expr),
        Expr::Unary(u) => check_supported(&u.expr),
        Expr::Subquery(q) => check_supported(&q.expr),
        Expr::Extension(_) => Err(Unsupported::Extension),
        Expr::VectorSelector(vs) => {
            if vs.matchers.or_matchers.is_empty() {
                Ok(())
            } else {
                Err(Unsupported::OrMatchers)
            }
        }
        Expr::MatrixSelector(ms) => {
            if ms.vs.matchers.or_matchers.is_empty() {
                Ok(())
            } else {
                Err(Unsupported::OrMatchers)
            }
        }
        Expr::Aggregate(a) => {
            let id = a.op.id();
            if id == T_LIMITK || id == T_LIMIT_RATIO {
                return Err(Unsupported::Aggregation(a.op.to_string()));
            }
            if let Some(p) = &a.param {
                check_supported(p)?;
            }
            check_supported(&a.expr)
        }
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                    return Err(Unsupported::Fill);
                }
            }
            check_supported(&b.lhs)?;
            check_supported(&b.rhs)
        }
        Expr::Call(c) => {
            if lookup(c.func.name).is_none() {
                return Err(Unsupported::Function(c.func.name.to_string()));
            }
            c.args.args.iter().try_for_each(|a| check_supported(a))
        }
    }
}

/// The label matchers of every selector in `expr`, each including its
/// metric name as a `__name__` matcher: what a change must match to affect
/// the expression's value.
#[must_use]
pub fn selectors(expr: &Expr) -> Vec<promql_parser::label::Matchers> {
    let mut out = Vec::new();
    collect_selectors(expr, &mut out);
    out
}

fn collect_selectors(expr: &Expr, out: &mut Vec<promql_parser::label::Matchers>) {
    let mut push = |vs: &promql_parser::parser::VectorSelector| {
        let mut m = vs.matchers.clone();
        if let Some(n) = &vs.name {
            m.matchers.push(promql_parser::label::Matcher::new(
                promql_parser::label::MatchOp::Equal,
                super::METRIC_NAME,
                n,
            ));
        }
        out.push(m);
    };
    match expr {
        Expr::VectorSelector(vs) => push(vs),
        Expr::MatrixSelector(ms) => push(&ms.vs),
        Expr::Paren(p) => collect_selectors(&p.expr, out),
        Expr::Unary(u) => collect_selectors(&u.expr, out),
        Expr::Subquery(s) => collect_selectors(&s.expr, out),
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                collect_selectors(p, out);
            }
            collect_selectors(&a.expr, out);
        }
        Expr::Binary(b) => {
            collect_selectors(&b.lhs, out);
            collect_selectors(&b.rhs, out);
        }
        Expr::Call(c) => c.args.args.iter().for_each(|a| collect_selectors(a, out)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// How far back from the evaluation time `expr` reads, in milliseconds:
/// the longest range or lookback plus its `offset`. `None` when a selector
/// is pinned with `@ <time>`, which can reach any time. The store must keep
/// at least this much of every series a rule reads.
#[must_use]
pub fn history_needed_ms(expr: &Expr, lookback_ms: i64) -> Option<i64> {
    use promql_parser::parser::{AtModifier, Offset, VectorSelector};
    let reach = |vs: &VectorSelector, window: i64| -> Option<i64> {
        if matches!(vs.at, Some(AtModifier::At(_))) {
            return None;
        }
        let offset = match &vs.offset {
            Some(Offset::Pos(d)) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            Some(Offset::Neg(d)) => -i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
            None => 0,
        };
        Some(window.saturating_add(offset).max(0))
    };
    let mut max = 0_i64;
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        let need = match e {
            Expr::VectorSelector(vs) => reach(vs, lookback_ms)?,
            Expr::MatrixSelector(ms) => reach(
                &ms.vs,
                i64::try_from(ms.range.as_millis()).unwrap_or(i64::MAX),
            )?,
            Expr::Paren(p) => {
                stack.push(&p.expr);
                0
            }
            Expr::Unary(u) => {
                stack.push(&u.expr);
                0
            }
            Expr::Subquery(q) => {
                // The subquery's window, then what its expression reads
                // back from the window's first step.
                let inner = history_needed_ms(&q.expr, lookback_ms)?;
                let window = i64::try_from(q.range.as_millis()).unwrap_or(i64::MAX);
                let offset = match &q.offset {
                    Some(Offset::Pos(d)) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
                    Some(Offset::Neg(d)) => -i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
                    None => 0,
                };
                if matches!(q.at, Some(AtModifier::At(_))) {
                    return None;
                }
                window.saturating_add(offset).max(0).saturating_add(inner)
            }
            Expr::Aggregate(a) => {
                stack.push(&a.expr);
                if let Some(p) = &a.param {
                    stack.push(p);
                }
                0
            }
            Expr::Binary(b) => {
                stack.push(&b.lhs);
                stack.push(&b.rhs);
                0
            }
            Expr::Call(c) => {
                stack.extend(c.args.args.iter().map(AsRef::as_ref));
                0
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => 0,
        };
        max = max.max(need);
    }
    Some(max)
}
