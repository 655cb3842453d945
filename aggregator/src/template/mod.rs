//! Go `text/template` for rule labels and annotations, as Prometheus
//! renders them (`prometheus/template`).
//!
//! Parsing and execution are the `gotmpl` crate's: the whole language
//! (`if`, `range`, `with`, `define`/`template`/`block`, variables,
//! pipelines, comments, trimming) and Go's builtins (`eq`, `and`, `len`,
//! `printf`, …). Like Prometheus, every template is prefixed with
//! `{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}`
//! `{{$externalURL := .ExternalURL}}{{$value := .Value}}` and the data is
//! `.Labels`, `.ExternalLabels`, `.ExternalURL` and `.Value`.
//!
//! Prometheus' functions are registered here: `query first label value
//! strvalue sortByLabel args match reReplaceAll safeHtml title toUpper
//! toLower graphLink tableLink stripPort stripDomain humanize humanize1024
//! humanizeDuration humanizePercentage humanizeTimestamp toTime now
//! pathPrefix externalURL parseDuration urlQueryEscape`.
//!
//! Where `gotmpl` parts from what Prometheus prints, the parsed tree is
//! adjusted before it is stored:
//! - `gotmpl` prints floats with Rust's formatting (`1000000`, `inf`);
//!   Go prints `1e+06`, `+Inf`. Every printing action ends in a hidden
//!   `__print` step, and `print`, `println` and `printf` are replaced, so
//!   floats print as `fmt.Sprint(float64)` does.
//! - Prometheus runs with `missingkey=zero`, so a missing label is `""`;
//!   `gotmpl` has no typed maps and yields `<no value>`. Field chains
//!   (`$labels.x`, `.Labels.x`, `(first $r).Labels`) become calls of a
//!   hidden `__field`, and `index` is replaced, to give `""` for a missing
//!   label.
//! - Go refuses unknown functions and undefined variables when parsing;
//!   `gotmpl` only when executing. Both are checked at load.
//!
//! `query` runs through the caller's [`TemplateData::query`]: expansion runs
//! the template, evaluates the queries it asked for, and runs it again with
//! their results until it asks for nothing new.

//!
//! # Layout
//! - [`Template`]: parsing and expansion, the data templates see.
//! - `check`: load-time checks Go's parser makes and `gotmpl`'s does not.
//! - `tree`: the tree adjustments above.
//! - `context`: what functions read of the expansion in progress.
//! - `value`: Go values: type names, conversions, `fmt.Sprint`.
//! - `functions`: Prometheus' template functions.
//! - `printf`: Go's `printf`.

mod check;
mod context;
mod functions;
mod printf;
#[cfg(test)]
mod tests;
mod tree;
mod value;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use gotmpl::Value;

use check::{check_balance, Checker};
use context::{swap_ctx, ExpandCtx};
use functions::funcs;
use tree::rewrite_list;
use value::exec_reason;

/// The variables Prometheus defines before every template.
const PRELUDE: &str = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// `{{range}}` iterations one expansion may run: far above any real
/// annotation, low enough that a template cannot stall rule evaluation.
const MAX_RANGE_ITERS: u64 = 100_000;

/// Distinct queries one expansion may run.
const MAX_QUERIES: usize = 64;

/// A template that does not parse or cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Malformed template text, as Go words it
    /// (`__alert_X:1: function "f" not defined`).
    #[error("template: {0}")]
    Syntax(String),
    /// Expansion failed.
    #[error("error executing template {name}: {reason}")]
    Exec {
        /// The template's name (`__alert_<rule>`).
        name: String,
        /// Why.
        reason: String,
    },
}

/// One sample of a `query` result.
#[derive(Debug, Clone, PartialEq)]
pub struct QuerySample {
    /// Its labels, `__name__` included.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Evaluates an instant query at the alert's evaluation time.
pub type QueryFn<'q> = dyn Fn(&str) -> Result<Vec<QuerySample>, String> + 'q;

/// What a template can refer to (`template.AlertTemplateData`).
#[derive(Clone, Default)]
pub struct TemplateData<'q> {
    /// The alert's labels (`$labels`, `.Labels`).
    pub labels: BTreeMap<String, String>,
    /// Configured external labels (`$externalLabels`).
    pub external_labels: BTreeMap<String, String>,
    /// Configured external URL (`$externalURL`).
    pub external_url: String,
    /// The sample value (`$value`, `.Value`).
    pub value: f64,
    /// The evaluation time, ms (`now`).
    pub time_ms: i64,
    /// Runs `query`; without it `query` fails.
    pub query: Option<&'q QueryFn<'q>>,
}

impl std::fmt::Debug for TemplateData<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemplateData")
            .field("labels", &self.labels)
            .field("external_labels", &self.external_labels)
            .field("external_url", &self.external_url)
            .field("value", &self.value)
            .field("time_ms", &self.time_ms)
            .field("query", &self.query.is_some())
            .finish()
    }
}

/// A parsed template.
#[derive(Clone)]
pub struct Template {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Literal(String),
    Go {
        name: String,
        tmpl: Arc<gotmpl::Template>,
    },
}

impl std::fmt::Debug for Template {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Literal(s) => f.debug_tuple("Template::Literal").field(s).finish(),
            Kind::Go { name, .. } => f.debug_tuple("Template").field(name).finish(),
        }
    }
}

impl Template {
    /// Parses `src` as the template of an unnamed alert.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        Self::parse_named("__alert", src)
    }

    /// Parses `src` as a label or annotation of alert `alert`; errors name
    /// the template `__alert_<alert>` as Prometheus does.
    pub fn parse_for_alert(alert: &str, src: &str) -> Result<Self, TemplateError> {
        Self::parse_named(&format!("__alert_{alert}"), src)
    }

    fn parse_named(name: &str, src: &str) -> Result<Self, TemplateError> {
        let full = format!("{PRELUDE}{src}");
        let mut tmpl = gotmpl::Template::new(name)
            .funcs(funcs().clone())
            .max_range_iters(MAX_RANGE_ITERS)
            .parse(&full)
            .map_err(|e| syntax_error(name, e))?;
        check_balance(name, &full).map_err(TemplateError::Syntax)?;
        let mut trees = Vec::new();
        for n in tmpl.templates() {
            let Some(tree) = tmpl.lookup(n) else { continue };
            // Only the main template sees the prelude's variables.
            let mut check = Checker {
                name,
                vars: vec!["$".into()],
            };
            check.list(tree).map_err(TemplateError::Syntax)?;
            let mut tree = tree.clone();
            rewrite_list(&mut tree);
            trees.push((n.to_string(), tree));
        }
        for (n, tree) in trees {
            tmpl = tmpl.add_parse_tree(&n, tree);
        }
        Ok(Self {
            kind: Kind::Go {
                name: name.to_string(),
                tmpl: Arc::new(tmpl),
            },
        })
    }

    /// A template that expands to `text` unchanged.
    #[must_use]
    pub fn literal(text: &str) -> Self {
        Self {
            kind: Kind::Literal(text.to_string()),
        }
    }

    /// Expands the template with `data`.
    pub fn expand(&self, data: &TemplateData<'_>) -> Result<String, TemplateError> {
        let (name, tmpl) = match &self.kind {
            Kind::Literal(s) => return Ok(s.clone()),
            Kind::Go { name, tmpl } => (name, tmpl),
        };
        let exec_error = |reason: String| TemplateError::Exec {
            name: name.clone(),
            reason: format!("template: {name}: {reason}"),
        };
        let root = root_value(data);
        let mut cache: HashMap<String, Result<Value, String>> = HashMap::new();
        // Each round either finishes or adds at least one query result to
        // the cache, which is bounded: this ends.
        loop {
            let ctx = ExpandCtx {
                external_url: data.external_url.clone(),
                time_ms: data.time_ms,
                can_query: data.query.is_some(),
                cache: std::mem::take(&mut cache),
                misses: Vec::new(),
            };
            let outer = swap_ctx(Some(ctx));
            let out = tmpl.execute_template_to_string(name, &root);
            let ctx = swap_ctx(outer).unwrap_or_default();
            cache = ctx.cache;
            let Some(query) = data.query.filter(|_| !ctx.misses.is_empty()) else {
                return out.map_err(|e| exec_error(exec_reason(&e)));
            };
            for q in ctx.misses {
                if cache.len() >= MAX_QUERIES {
                    return Err(exec_error(format!(
                        "error calling query: more than {MAX_QUERIES} distinct queries"
                    )));
                }
                let result = query(&q).map(|v| samples_value(&v));
                cache.insert(q, result);
            }
        }
    }
}

/// A parse error in Go's words: `name:line: message` (Go gives no column,
/// and ours would count the prelude).
fn syntax_error(name: &str, e: gotmpl::TemplateError) -> TemplateError {
    match e {
        gotmpl::TemplateError::Parse { line, message, .. }
        | gotmpl::TemplateError::Lex { line, message, .. } => {
            TemplateError::Syntax(format!("{name}:{line}: {message}"))
        }
        other => TemplateError::Syntax(format!("{name}: {other}")),
    }
}

fn labels_value(m: &BTreeMap<String, String>) -> Value {
    Value::Map(Arc::new(
        m.iter()
            .map(|(k, v)| (Arc::from(k.as_str()), Value::String(Arc::from(v.as_str()))))
            .collect(),
    ))
}

fn root_value(d: &TemplateData<'_>) -> Value {
    Value::Map(Arc::new(BTreeMap::from([
        (Arc::from("Labels"), labels_value(&d.labels)),
        (
            Arc::from("ExternalLabels"),
            labels_value(&d.external_labels),
        ),
        (
            Arc::from("ExternalURL"),
            Value::String(Arc::from(d.external_url.as_str())),
        ),
        (Arc::from("Value"), Value::Float(d.value)),
    ])))
}

/// A query result as Prometheus hands it to templates: a list of samples
/// with `.Labels` and `.Value`.
fn samples_value(v: &[QuerySample]) -> Value {
    Value::List(
        v.iter()
            .map(|s| {
                Value::Map(Arc::new(BTreeMap::from([
                    (Arc::from("Labels"), labels_value(&s.labels)),
                    (Arc::from("Value"), Value::Float(s.value)),
                ])))
            })
            .collect(),
    )
}
