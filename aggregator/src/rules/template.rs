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

// The formatting code mirrors Go's fmt/strconv, with their short names.
#![allow(clippy::many_single_char_names)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use gotmpl::parse::{CommandNode, Expr, ListNode, Node, PipeNode, Pos, SmolStr};
use gotmpl::{FuncMap, Value};
use nodewatch_proto::gocompat::{parse_duration, parse_float, query_escape, rfc3339_ms};

/// The variables Prometheus defines before every template.
const PRELUDE: &str = "{{$labels := .Labels}}{{$externalLabels := .ExternalLabels}}{{$externalURL := .ExternalURL}}{{$value := .Value}}";

/// `{{range}}` iterations one expansion may run: far above any real
/// annotation, low enough that a template cannot stall rule evaluation.
const MAX_RANGE_ITERS: u64 = 100_000;

/// Distinct queries one expansion may run.
const MAX_QUERIES: usize = 64;

/// Largest `printf` width or precision honoured: more is never useful in
/// an alert and would let one template allocate without bound.
const MAX_PRINTF_WIDTH: usize = 1024;

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
        check_balance(name, &full)?;
        let mut trees = Vec::new();
        for n in tmpl.templates() {
            let Some(tree) = tmpl.lookup(n) else { continue };
            // Only the main template sees the prelude's variables.
            let mut check = Checker {
                name,
                vars: vec!["$".into()],
            };
            check.list(tree)?;
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

fn exec_reason(e: &gotmpl::TemplateError) -> String {
    let s = e.to_string();
    match s.strip_prefix("execution error: ") {
        Some(rest) => rest.to_string(),
        None => s,
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

// ---------------------------------------------------------------------------
// Load-time checks Go's parser makes and gotmpl's does not.

const BUILTINS: &[&str] = &[
    "and", "call", "html", "index", "slice", "js", "len", "not", "or", "print", "printf",
    "println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne",
];

/// gotmpl accepts an `if`, `range`, `with`, `define` or `block` that is
/// never closed, and a stray `{{end}}` or `{{else}}`; Go refuses them.
/// Runs after gotmpl has lexed `src` without error, so the actions are
/// well formed.
fn check_balance(name: &str, src: &str) -> Result<(), TemplateError> {
    let b = src.as_bytes();
    let fail = |at: usize, msg: &str| {
        let line = src.get(..at).unwrap_or(src).matches('\n').count() + 1;
        Err(TemplateError::Syntax(format!("{name}:{line}: {msg}")))
    };
    let mut depth = 0_usize;
    let mut i = 0;
    while let Some(off) = src.get(i..).and_then(|r| r.find("{{")) {
        let start = i + off + 2;
        let mut j = start;
        // To the closing delimiter, past quoted strings and comments.
        loop {
            match b.get(j) {
                None => return Ok(()),
                Some(&q @ (b'"' | b'\'')) => {
                    j += 1;
                    while j < b.len() && b[j] != q {
                        j += if b[j] == b'\\' { 2 } else { 1 };
                    }
                    j += 1;
                }
                Some(b'`') => {
                    j += 1;
                    while j < b.len() && b[j] != b'`' {
                        j += 1;
                    }
                    j += 1;
                }
                Some(b'/') if b.get(j + 1) == Some(&b'*') => {
                    match src.get(j + 2..).and_then(|r| r.find("*/")) {
                        Some(e) => j += e + 4,
                        None => return Ok(()),
                    }
                }
                Some(b'}') if b.get(j + 1) == Some(&b'}') => break,
                Some(_) => j += 1,
            }
        }
        let Some(body) = src.get(start..j) else {
            return Ok(());
        };
        i = j + 2;
        // `{{- ` trims; `{{-3}}` is a number.
        let body = match body.strip_prefix('-') {
            Some(r) if r.starts_with(char::is_whitespace) => r,
            _ => body,
        }
        .trim_start();
        let word = body
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        match word {
            "if" | "range" | "with" | "define" | "block" => depth += 1,
            "end" if depth == 0 => return fail(start, "unexpected {{end}}"),
            "end" => depth -= 1,
            "else" if depth == 0 => return fail(start, "unexpected {{else}}"),
            _ => {}
        }
    }
    if depth > 0 {
        return fail(src.len(), "unexpected EOF");
    }
    Ok(())
}

struct Checker<'a> {
    name: &'a str,
    /// Variables in scope, innermost last (Go's `Tree.vars`).
    vars: Vec<SmolStr>,
}

impl Checker<'_> {
    fn fail(&self, pos: Pos, msg: &str) -> TemplateError {
        TemplateError::Syntax(format!("{}:{}: {msg}", self.name, pos.line))
    }

    fn list(&mut self, l: &ListNode) -> Result<(), TemplateError> {
        l.nodes.iter().try_for_each(|n| self.node(n))
    }

    fn node(&mut self, n: &Node) -> Result<(), TemplateError> {
        match n {
            Node::List(l) => self.list(l),
            Node::Text(_) | Node::Break(_) | Node::Continue(_) | Node::Define(_) => Ok(()),
            Node::Action(a) => self.pipe(&a.pipe),
            // Variables declared in a control structure live to its `end`,
            // `else` branches included.
            Node::If(b) | Node::Range(b) | Node::With(b) => {
                let mark = self.vars.len();
                self.pipe(&b.pipe)?;
                self.list(&b.body)?;
                if let Some(e) = &b.else_body {
                    self.list(e)?;
                }
                self.vars.truncate(mark);
                Ok(())
            }
            Node::Template(t) => t.pipe.as_ref().map_or(Ok(()), |p| self.pipe(p)),
        }
    }

    fn pipe(&mut self, p: &PipeNode) -> Result<(), TemplateError> {
        for d in &p.decl {
            if !p.is_assign {
                self.vars.push(d.clone());
            } else if !self.vars.contains(d) {
                return Err(self.fail(p.pos, &format!("undefined variable {:?}", d.as_str())));
            }
        }
        for c in &p.commands {
            for a in &c.args {
                self.expr(a)?;
            }
        }
        Ok(())
    }

    fn expr(&mut self, e: &Expr) -> Result<(), TemplateError> {
        match e {
            Expr::Identifier(pos, f) => {
                if BUILTINS.contains(&f.as_str()) || funcs().contains_key(f.as_str()) {
                    Ok(())
                } else {
                    Err(self.fail(*pos, &format!("function {:?} not defined", f.as_str())))
                }
            }
            Expr::Variable(pos, v, _) => {
                if self.vars.contains(v) {
                    Ok(())
                } else {
                    Err(self.fail(*pos, &format!("undefined variable {:?}", v.as_str())))
                }
            }
            Expr::Pipe(_, p) => self.pipe(p),
            Expr::Chain(_, inner, _) => self.expr(inner),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Tree adjustments for Go's printing and `missingkey=zero`.

fn rewrite_list(l: &mut ListNode) {
    l.nodes.iter_mut().for_each(rewrite_node);
}

fn rewrite_node(n: &mut Node) {
    match n {
        Node::List(l) => rewrite_list(l),
        Node::Text(_) | Node::Break(_) | Node::Continue(_) => {}
        Node::Action(a) => {
            rewrite_pipe(&mut a.pipe);
            // Printed, not assigned: print as Go does.
            if a.pipe.decl.is_empty() {
                let pos = a.pipe.pos;
                a.pipe.commands.push(CommandNode {
                    pos,
                    args: vec![Expr::Identifier(pos, SmolStr::new_static("__print"))],
                });
            }
        }
        Node::If(b) | Node::Range(b) | Node::With(b) => {
            rewrite_pipe(&mut b.pipe);
            rewrite_list(&mut b.body);
            if let Some(e) = &mut b.else_body {
                rewrite_list(e);
            }
        }
        Node::Template(t) => {
            if let Some(p) = &mut t.pipe {
                rewrite_pipe(p);
            }
        }
        Node::Define(d) => rewrite_list(&mut d.body),
    }
}

fn rewrite_pipe(p: &mut PipeNode) {
    for c in &mut p.commands {
        c.args.iter_mut().for_each(rewrite_expr);
    }
}

/// `base.a.b` → `(__field base "a" "b")`.
fn field_call(pos: Pos, base: Expr, chain: &[SmolStr]) -> Expr {
    let mut args = vec![Expr::Identifier(pos, SmolStr::new_static("__field")), base];
    args.extend(
        chain
            .iter()
            .map(|k| Expr::String(pos, Arc::from(k.as_str()))),
    );
    Expr::Pipe(
        pos,
        PipeNode {
            pos,
            decl: Vec::new(),
            commands: vec![CommandNode { pos, args }],
            is_assign: false,
        },
    )
}

fn rewrite_expr(e: &mut Expr) {
    let new = match e {
        Expr::Field(pos, chain) if !chain.is_empty() => field_call(*pos, Expr::Dot(*pos), chain),
        Expr::Variable(pos, v, chain) if !chain.is_empty() => {
            field_call(*pos, Expr::Variable(*pos, v.clone(), Vec::new()), chain)
        }
        Expr::Chain(pos, inner, chain) => {
            rewrite_expr(inner);
            let base = std::mem::replace(inner.as_mut(), Expr::Nil(*pos));
            field_call(*pos, base, chain)
        }
        Expr::Pipe(_, p) => {
            rewrite_pipe(p);
            return;
        }
        _ => return,
    };
    *e = new;
}

// ---------------------------------------------------------------------------
// Expansion context: what functions need from the current expansion. The
// functions are shared by every template and cannot borrow the caller's
// storage, so they read this thread's context instead.

#[derive(Default)]
struct ExpandCtx {
    external_url: String,
    time_ms: i64,
    can_query: bool,
    cache: HashMap<String, Result<Value, String>>,
    /// Queries asked for and not in `cache`, in order.
    misses: Vec<String>,
}

thread_local! {
    static CTX: RefCell<Option<ExpandCtx>> = const { RefCell::new(None) };
}

fn swap_ctx(ctx: Option<ExpandCtx>) -> Option<ExpandCtx> {
    CTX.with(|c| match c.try_borrow_mut() {
        Ok(mut cur) => std::mem::replace(&mut *cur, ctx),
        Err(_) => None,
    })
}

fn with_ctx<T>(f: impl FnOnce(&mut ExpandCtx) -> Result<T, String>) -> Result<T, String> {
    CTX.with(|c| match c.try_borrow_mut() {
        Ok(mut cur) => match cur.as_mut() {
            Some(ctx) => f(ctx),
            None => Err("not inside a template expansion".into()),
        },
        Err(_) => Err("template context busy".into()),
    })
}

// ---------------------------------------------------------------------------
// Functions.

type Func = fn(&[Value]) -> Result<Value, String>;

fn funcs() -> &'static FuncMap {
    static FUNCS: OnceLock<FuncMap> = OnceLock::new();
    FUNCS.get_or_init(build_funcs)
}

fn build_funcs() -> FuncMap {
    let mut m = FuncMap::new();
    // Go's own wording for these: no "error calling" prefix.
    let raw: &[(&str, Func)] = &[
        ("__field", field),
        ("__print", print_action),
        ("print", |a| Ok(string(go_sprint(a, false)))),
        ("println", |a| Ok(string(go_sprint(a, true)))),
    ];
    for &(name, f) in raw {
        m.insert(
            name.into(),
            Arc::new(move |args: &[Value]| f(args).map_err(gotmpl::TemplateError::Exec)),
        );
    }
    let calls: &[(&str, Func)] = &[
        ("index", index),
        ("printf", printf),
        ("query", query),
        ("first", first),
        ("label", |a| {
            let [l, s] = args::<2>("label", a)?;
            let l = want_str(l)?;
            Ok(string(sample_label(s, l)?))
        }),
        ("value", |a| {
            let [s] = args::<1>("value", a)?;
            sample_field(s, "Value")
        }),
        ("strvalue", |a| {
            let [s] = args::<1>("strvalue", a)?;
            Ok(string(sample_label(s, "__value__")?))
        }),
        ("sortByLabel", sort_by_label),
        ("args", |a| {
            Ok(Value::Map(Arc::new(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| (Arc::from(format!("arg{i}").as_str()), v.clone()))
                    .collect(),
            )))
        }),
        ("match", |a| {
            let [p, t] = args::<2>("match", a)?;
            let re = regex::Regex::new(want_str(p)?).map_err(|e| e.to_string())?;
            Ok(Value::Bool(re.is_match(want_str(t)?)))
        }),
        ("reReplaceAll", |a| {
            let [p, r, t] = args::<3>("reReplaceAll", a)?;
            let re = regex::Regex::new(want_str(p)?).map_err(|e| e.to_string())?;
            Ok(string(
                re.replace_all(want_str(t)?, want_str(r)?).into_owned(),
            ))
        }),
        ("safeHtml", |a| {
            let [t] = args::<1>("safeHtml", a)?;
            Ok(string(want_str(t)?.to_string()))
        }),
        ("title", |a| {
            let [t] = args::<1>("title", a)?;
            Ok(string(title(want_str(t)?)))
        }),
        ("toUpper", |a| {
            let [t] = args::<1>("toUpper", a)?;
            Ok(string(want_str(t)?.to_uppercase()))
        }),
        ("toLower", |a| {
            let [t] = args::<1>("toLower", a)?;
            Ok(string(want_str(t)?.to_lowercase()))
        }),
        ("graphLink", |a| {
            let [e] = args::<1>("graphLink", a)?;
            Ok(string(format!(
                "/graph?g0.expr={}&g0.tab=0",
                query_escape(want_str(e)?)
            )))
        }),
        ("tableLink", |a| {
            let [e] = args::<1>("tableLink", a)?;
            Ok(string(format!(
                "/graph?g0.expr={}&g0.tab=1",
                query_escape(want_str(e)?)
            )))
        }),
        ("urlQueryEscape", |a| {
            let [s] = args::<1>("urlQueryEscape", a)?;
            Ok(string(query_escape(want_str(s)?)))
        }),
        ("stripPort", |a| {
            let [s] = args::<1>("stripPort", a)?;
            Ok(string(strip_port(want_str(s)?)))
        }),
        ("stripDomain", |a| {
            let [s] = args::<1>("stripDomain", a)?;
            Ok(string(strip_domain(want_str(s)?)))
        }),
        ("humanize", |a| {
            let [v] = args::<1>("humanize", a)?;
            Ok(string(humanize(to_float(v)?)))
        }),
        ("humanize1024", |a| {
            let [v] = args::<1>("humanize1024", a)?;
            Ok(string(humanize1024(to_float(v)?)))
        }),
        ("humanizeDuration", |a| {
            let [v] = args::<1>("humanizeDuration", a)?;
            Ok(string(humanize_duration(to_float(v)?)))
        }),
        ("humanizePercentage", |a| {
            let [v] = args::<1>("humanizePercentage", a)?;
            Ok(string(format!(
                "{}%",
                go_format_g(to_float(v)? * 100.0, Some(4))
            )))
        }),
        ("humanizeTimestamp", |a| {
            let [v] = args::<1>("humanizeTimestamp", a)?;
            let v = to_float(v)?;
            if v.is_nan() || v.is_infinite() {
                return Ok(string(go_format_g(v, Some(4))));
            }
            Ok(string(go_time(v)?))
        }),
        ("toTime", |a| {
            let [v] = args::<1>("toTime", a)?;
            let v = to_float(v)?;
            if v.is_nan() || v.is_infinite() {
                return Err("value is NaN or Inf".into());
            }
            Ok(string(go_time(v)?))
        }),
        ("now", |a| {
            args::<0>("now", a)?;
            with_ctx(|c| Ok(Value::Float(c.time_ms as f64 / 1000.0)))
        }),
        ("externalURL", |a| {
            args::<0>("externalURL", a)?;
            with_ctx(|c| Ok(string(c.external_url.clone())))
        }),
        ("pathPrefix", |a| {
            args::<0>("pathPrefix", a)?;
            with_ctx(|c| Ok(string(url_path(&c.external_url).to_string())))
        }),
        ("parseDuration", |a| {
            let [d] = args::<1>("parseDuration", a)?;
            let ms = parse_duration(want_str(d)?)?;
            Ok(Value::Float(ms as f64 / 1000.0))
        }),
    ];
    for &(name, f) in calls {
        m.insert(
            name.into(),
            Arc::new(move |args: &[Value]| {
                f(args).map_err(|reason| {
                    gotmpl::TemplateError::Exec(format!("error calling {name}: {reason}"))
                })
            }),
        );
    }
    m
}

fn string(s: String) -> Value {
    Value::String(Arc::from(s))
}

/// Exactly `N` arguments, as Go checks a function's arity.
fn args<'a, const N: usize>(f: &str, a: &'a [Value]) -> Result<[&'a Value; N], String> {
    if a.len() != N {
        return Err(format!(
            "wrong number of args for {f}: want {N} got {}",
            a.len()
        ));
    }
    Ok(std::array::from_fn(|i| &a[i]))
}

/// Go's name for a value's type, for error messages.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Nil => "<nil>",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Uint(_) => "uint",
        Value::Float(_) => "float64",
        Value::String(_) => "string",
        Value::List(_) => "[]interface {}",
        Value::Map(m) if is_label_map(m) => "map[string]string",
        Value::Map(_) => "map[string]interface {}",
        Value::Function(_) => "func",
    }
}

fn want_str(v: &Value) -> Result<&str, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            go_type(other)
        )),
    }
}

/// `convertToFloat`: numbers, and strings through `strconv.ParseFloat`.
fn to_float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Float(f) => Ok(*f),
        Value::Int(i) => Ok(*i as f64),
        Value::Uint(u) => Ok(*u as f64),
        Value::String(s) => parse_float(s.trim())
            .ok_or_else(|| format!("strconv.ParseFloat: parsing {s:?}: invalid syntax")),
        other => Err(format!("can't convert {} to float", go_type(other))),
    }
}

/// A map of labels (Go `map[string]string`): a missing key is `""`.
fn is_label_map(m: &BTreeMap<Arc<str>, Value>) -> bool {
    m.values().all(|v| matches!(v, Value::String(_)))
}

/// The template data and query samples stand for Go structs: a field they
/// lack is an error.
fn is_struct(m: &BTreeMap<Arc<str>, Value>) -> bool {
    matches!(m.get("Labels"), Some(Value::Map(_)))
}

/// The value of key `k` of map `m` under `missingkey=zero`.
fn map_get(m: &BTreeMap<Arc<str>, Value>, k: &str) -> Result<Value, String> {
    match m.get(k) {
        Some(v) => Ok(v.clone()),
        None if is_struct(m) => Err(format!("can't evaluate field {k} in type struct")),
        None if is_label_map(m) => Ok(Value::String(Arc::from(""))),
        None => Ok(Value::Nil),
    }
}

/// `base.k1.k2…` (see the module docs).
fn field(a: &[Value]) -> Result<Value, String> {
    let Some((base, keys)) = a.split_first() else {
        return Err("missing field base".into());
    };
    let mut v = base.clone();
    for k in keys {
        let k = want_str(k)?;
        v = match &v {
            Value::Map(m) => map_get(m, k)?,
            Value::Nil => return Err(format!("nil pointer evaluating interface {{}}.{k}")),
            other => {
                return Err(format!(
                    "can't evaluate field {k} in type {}",
                    go_type(other)
                ))
            }
        };
    }
    Ok(v)
}

/// Go's `index`, with `missingkey=zero` for label maps.
fn index(a: &[Value]) -> Result<Value, String> {
    let Some((item, keys)) = a.split_first() else {
        return Err("wrong number of args for index: want at least 1 got 0".into());
    };
    let mut v = item.clone();
    for k in keys {
        v = match (&v, k) {
            (Value::Map(m), Value::String(s)) if !is_struct(m) => map_get(m, s)?,
            (Value::Nil, _) => return Err("index of untyped nil".into()),
            _ => v.index(k).map_err(|e| exec_reason(&e))?,
        };
    }
    Ok(v)
}

fn print_action(a: &[Value]) -> Result<Value, String> {
    let [v] = args::<1>("__print", a)?;
    Ok(match v {
        Value::String(_) => v.clone(),
        // Go prints a missing value so.
        Value::Nil => string("<no value>".into()),
        other => string(go_fmt(other)),
    })
}

/// `fmt.Sprint` (`fmt.Sprintln` with `line`).
fn go_sprint(a: &[Value], line: bool) -> String {
    let mut out = String::new();
    for (i, v) in a.iter().enumerate() {
        let is_str = |v: &Value| matches!(v, Value::String(_));
        if i > 0 && (line || (!is_str(&a[i - 1]) && !is_str(v))) {
            out.push(' ');
        }
        out.push_str(&go_fmt(v));
    }
    if line {
        out.push('\n');
    }
    out
}

/// `fmt.Sprint` of one value.
fn go_fmt(v: &Value) -> String {
    match v {
        Value::Nil => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Float(f) => go_format_g(*f, None),
        Value::String(s) => s.to_string(),
        Value::List(l) => format!("[{}]", l.iter().map(go_fmt).collect::<Vec<_>>().join(" ")),
        Value::Map(m) if is_struct(m) => {
            // Struct fields in declaration order; a query sample is a pointer.
            let f = |k: &str| m.get(k).map(go_fmt).unwrap_or_default();
            if m.contains_key("ExternalURL") {
                format!(
                    "{{{} {} {} {}}}",
                    f("Labels"),
                    f("ExternalLabels"),
                    f("ExternalURL"),
                    f("Value")
                )
            } else {
                format!("&{{{} {}}}", f("Labels"), f("Value"))
            }
        }
        Value::Map(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", go_fmt(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Value::Function(_) => "<func>".into(),
    }
}

fn query(a: &[Value]) -> Result<Value, String> {
    let [q] = args::<1>("query", a)?;
    let q = want_str(q)?;
    with_ctx(|c| {
        if !c.can_query {
            return Err("no query engine here".into());
        }
        if let Some(r) = c.cache.get(q) {
            return r.clone();
        }
        // Asked for the first time: the caller evaluates it and runs the
        // template again; until then it is empty.
        if !c.misses.iter().any(|m| m == q) {
            c.misses.push(q.to_string());
        }
        Ok(Value::List(Arc::from(Vec::new())))
    })
}

fn query_result(v: &Value) -> Result<&[Value], String> {
    match v {
        Value::List(l) => Ok(l),
        other => Err(format!(
            "wrong type for value; expected template.queryResult; got {}",
            go_type(other)
        )),
    }
}

fn first(a: &[Value]) -> Result<Value, String> {
    let [v] = args::<1>("first", a)?;
    query_result(v)?
        .first()
        .cloned()
        .ok_or_else(|| "first() called on vector with no elements".into())
}

fn sample_field(s: &Value, f: &str) -> Result<Value, String> {
    match s {
        Value::Map(m) if is_struct(m) => map_get(m, f),
        other => Err(format!(
            "wrong type for value; expected *template.sample; got {}",
            go_type(other)
        )),
    }
}

fn sample_label(s: &Value, l: &str) -> Result<String, String> {
    match sample_field(s, "Labels")? {
        Value::Map(m) => Ok(match m.get(l) {
            Some(Value::String(v)) => v.to_string(),
            _ => String::new(),
        }),
        _ => Ok(String::new()),
    }
}

fn sort_by_label(a: &[Value]) -> Result<Value, String> {
    let [l, v] = args::<2>("sortByLabel", a)?;
    let l = want_str(l)?;
    let mut keyed = query_result(v)?
        .iter()
        .map(|s| Ok((sample_label(s, l)?, s.clone())))
        .collect::<Result<Vec<_>, String>>()?;
    // Stable, as `sort.Stable`.
    keyed.sort_by(|x, y| x.0.cmp(&y.0));
    Ok(Value::List(keyed.into_iter().map(|(_, s)| s).collect()))
}

/// `strings.Title` as Prometheus uses it: the first letter of each word
/// upper-cased, the rest kept.
fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_letter = false;
    for c in s.chars() {
        if prev_letter {
            out.push(c);
        } else {
            out.extend(c.to_uppercase());
        }
        prev_letter = c.is_alphanumeric() || c == '_' || c == '\'';
    }
    out
}

/// `net.SplitHostPort`'s host, or the input when there is no port.
fn strip_port(s: &str) -> String {
    match s.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
            let h = h
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(h);
            if h.contains(':') && !s.starts_with('[') {
                s.to_string()
            } else {
                h.to_string()
            }
        }
        _ => s.to_string(),
    }
}

/// Drops everything after the first dot of the host, keeping a port; IP
/// addresses are kept whole.
fn strip_domain(s: &str) -> String {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, Some(p)),
        _ => (s, None),
    };
    if host.parse::<std::net::IpAddr>().is_ok() || host.starts_with('[') {
        return s.to_string();
    }
    let short = host.split('.').next().unwrap_or(host);
    match port {
        Some(p) => format!("{short}:{p}"),
        None => short.to_string(),
    }
}

/// The path of a URL (`url.URL.Path`).
fn url_path(u: &str) -> &str {
    let rest = u.split_once("://").map_or(u, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    rest.find('/').map_or("", |i| &rest[i..])
}

/// `model.TimeFromUnixNano(int64(v * 1e9)).Time().UTC()` printed as Go's
/// `time.Time.String()`: millisecond precision, trailing zeros dropped.
fn go_time(v: f64) -> Result<String, String> {
    let nanos = v * 1e9;
    // i64's range as floats (2^63).
    let limit = 2f64.powi(63);
    if !(-limit..limit).contains(&nanos) {
        return Err(format!(
            "{} cannot be represented as a nanoseconds timestamp since it overflows int64",
            go_format_g(v, None)
        ));
    }
    let ms = (nanos as i64) / 1_000_000;
    let date = rfc3339_ms(ms);
    let date = date.trim_end_matches('Z');
    let (day, time) = date.split_once('T').unwrap_or((date, ""));
    let time = if time.contains('.') {
        time.trim_end_matches('0')
    } else {
        time
    };
    Ok(format!("{day} {time} +0000 UTC"))
}

const SI_BIG: [&str; 8] = ["k", "M", "G", "T", "P", "E", "Z", "Y"];
const SI_SMALL: [&str; 8] = ["m", "u", "n", "p", "f", "a", "z", "y"];

fn humanize(mut v: f64) -> String {
    let g4 = |v: f64| go_format_g(v, Some(4));
    if v == 0.0 || v.is_nan() || v.is_infinite() {
        return g4(v);
    }
    let mut prefix = "";
    if v.abs() >= 1.0 {
        for p in SI_BIG {
            if v.abs() < 1000.0 {
                break;
            }
            prefix = p;
            v /= 1000.0;
        }
    } else {
        for p in SI_SMALL {
            if v.abs() >= 1.0 {
                break;
            }
            prefix = p;
            v *= 1000.0;
        }
    }
    format!("{}{prefix}", g4(v))
}

fn humanize1024(mut v: f64) -> String {
    if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
        return go_format_g(v, Some(4));
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", go_format_g(v, Some(4)))
}

fn humanize_duration(mut v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return go_format_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", go_format_g(v, Some(4)));
    }
    if v.abs() >= 1.0 {
        let sign = if v < 0.0 {
            v = -v;
            "-"
        } else {
            ""
        };
        let d = v as i64;
        let (s, m, h, days) = (d % 60, (d / 60) % 60, (d / 3600) % 24, d / 86400);
        if days != 0 {
            return format!("{sign}{days}d {h}h {m}m {s}s");
        }
        if h != 0 {
            return format!("{sign}{h}h {m}m {s}s");
        }
        if m != 0 {
            return format!("{sign}{m}m {s}s");
        }
        return format!("{sign}{}s", go_format_g(v, Some(4)));
    }
    let mut prefix = "";
    for p in SI_SMALL {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", go_format_g(v, Some(4)))
}

/// Go's `%g` (`prec = None`: shortest, as `%v` prints a float64).
#[must_use]
pub fn go_format_g(v: f64, prec: Option<usize>) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let neg = v.is_sign_negative() && v != 0.0;
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let e = match prec {
        None => format!("{:e}", v.abs()),
        Some(p) => format!("{:.*e}", p.max(1) - 1, v.abs()),
    };
    let (mant, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let mut digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    while digits.len() > 1 && digits.ends_with('0') {
        digits.pop();
    }
    let nd = digits.len() as i32;
    let dp = exp + 1;
    // strconv's %g: exponent form below 1e-4 or at/above the precision
    // (6 for the shortest representation).
    let eprec = match prec {
        None => 6,
        Some(p) => {
            let p = p.max(1) as i32;
            if p > nd && nd >= dp {
                nd
            } else {
                p
            }
        }
    };
    let mut out = String::new();
    if neg {
        out.push('-');
    }
    if exp < -4 || exp >= eprec {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    } else if dp <= 0 {
        out.push_str("0.");
        out.push_str(&"0".repeat((-dp) as usize));
        out.push_str(&digits);
    } else if dp >= nd {
        out.push_str(&digits);
        out.push_str(&"0".repeat((dp - nd) as usize));
    } else {
        out.push_str(&digits[..dp as usize]);
        out.push('.');
        out.push_str(&digits[dp as usize..]);
    }
    out
}

// ---------------------------------------------------------------------------
// printf: directives are split here and each is formatted by gotmpl's
// printf, except where floats need Go's own output.

fn printf(a: &[Value]) -> Result<Value, String> {
    let Some((f, rest)) = a.split_first() else {
        return Err("wrong number of args for printf: want at least 1 got 0".into());
    };
    Ok(string(go_sprintf(want_str(f)?, rest)))
}

/// One `%…` directive with its argument resolved.
struct Directive {
    flags: String,
    width: Option<usize>,
    prec: Option<usize>,
    verb: char,
}

impl Directive {
    fn text(&self, verb: char) -> String {
        let mut s = format!("%{}", self.flags);
        if let Some(w) = self.width {
            let _ = write!(s, "{w}");
        }
        if let Some(p) = self.prec {
            let _ = write!(s, ".{p}");
        }
        s.push(verb);
        s
    }

    fn pad(&self, s: &str, out: &mut String) {
        let pad = self.width.unwrap_or(0).saturating_sub(s.chars().count());
        if self.flags.contains('-') {
            out.push_str(s);
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(s);
        }
    }
}

/// gotmpl's printf for one directive and one argument.
fn gotmpl_printf(directive: &str, arg: Option<&Value>) -> String {
    static ONE: OnceLock<Option<gotmpl::Template>> = OnceLock::new();
    static NONE: OnceLock<Option<gotmpl::Template>> = OnceLock::new();
    let (cell, src) = match arg {
        Some(_) => (&ONE, "{{printf .F .A}}"),
        None => (&NONE, "{{printf .F}}"),
    };
    let tmpl = cell.get_or_init(|| gotmpl::Template::new("printf").parse(src).ok());
    let mut data = BTreeMap::from([(Arc::from("F"), string(directive.to_string()))]);
    if let Some(a) = arg {
        data.insert(Arc::from("A"), a.clone());
    }
    tmpl.as_ref()
        .and_then(|t| t.execute_to_string(&Value::Map(Arc::new(data))).ok())
        .unwrap_or_else(|| format!("%!({directive})"))
}

/// Reads `[n]` at `chars[*i]`: `Some(Ok(n-1))`, `Some(Err)` when malformed,
/// `None` when absent.
fn arg_index(chars: &[char], i: &mut usize, nargs: usize) -> Option<Result<usize, ()>> {
    if chars.get(*i) != Some(&'[') {
        return None;
    }
    let close = chars[*i..].iter().position(|&c| c == ']')?;
    let digits: String = chars[*i + 1..*i + close].iter().collect();
    *i += close + 1;
    Some(match digits.parse::<usize>() {
        Ok(n) if n >= 1 && n <= nargs => Ok(n - 1),
        _ => Err(()),
    })
}

/// A width or precision: digits, or `*` taking an int argument.
fn number_or_star(
    chars: &[char],
    i: &mut usize,
    args: &[Value],
    next: &mut usize,
) -> Result<Option<i64>, ()> {
    if chars.get(*i) == Some(&'*') {
        *i += 1;
        let v = match args.get(*next) {
            Some(Value::Int(n)) => Ok(Some(*n)),
            Some(Value::Uint(n)) => Ok(i64::try_from(*n).ok()),
            _ => Err(()),
        };
        *next += 1;
        return v;
    }
    let start = *i;
    while chars.get(*i).is_some_and(char::is_ascii_digit) {
        *i += 1;
    }
    if *i == start {
        return Ok(None);
    }
    let s: String = chars[start..*i].iter().collect();
    Ok(Some(s.parse::<i64>().unwrap_or(i64::MAX)))
}

/// Go's `fmt.Sprintf` (see the module docs for what is ours).
fn go_sprintf(format: &str, args: &[Value]) -> String {
    let chars: Vec<char> = format.chars().collect();
    let mut out = String::new();
    let mut next = 0;
    let mut reordered = false;
    let mut i = 0;
    let clamp = |n: i64| (n.unsigned_abs() as usize).min(MAX_PRINTF_WIDTH);
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.get(i).filter(|f| "+-# 0".contains(**f)) {
            flags.push(f);
            i += 1;
        }
        let mut bad_index = false;
        let mut index = |i: &mut usize, next: &mut usize, reordered: &mut bool| {
            if let Some(r) = arg_index(&chars, i, args.len()) {
                *reordered = true;
                match r {
                    Ok(n) => *next = n,
                    Err(()) => bad_index = true,
                }
            }
        };
        index(&mut i, &mut next, &mut reordered);
        let width = match number_or_star(&chars, &mut i, args, &mut next) {
            Ok(Some(w)) => {
                if w < 0 && !flags.contains('-') {
                    flags.push('-');
                }
                Some(clamp(w))
            }
            Ok(None) => None,
            Err(()) => {
                out.push_str("%!(BADWIDTH)");
                None
            }
        };
        let mut prec = None;
        if chars.get(i) == Some(&'.') {
            i += 1;
            index(&mut i, &mut next, &mut reordered);
            prec = match number_or_star(&chars, &mut i, args, &mut next) {
                Ok(Some(p)) if p >= 0 => Some(clamp(p)),
                // Go: a negative `*` precision means none.
                Ok(Some(_)) => None,
                Ok(None) => Some(0),
                Err(()) => {
                    out.push_str("%!(BADPREC)");
                    None
                }
            };
        }
        index(&mut i, &mut next, &mut reordered);
        let Some(&verb) = chars.get(i) else {
            out.push_str("%!(NOVERB)");
            break;
        };
        i += 1;
        if verb == '%' {
            out.push('%');
            continue;
        }
        if bad_index {
            let _ = write!(out, "%!{verb}(BADINDEX)");
            continue;
        }
        let Some(arg) = args.get(next) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        next += 1;
        let d = Directive {
            flags,
            width,
            prec,
            verb,
        };
        format_one(&d, arg, &mut out);
    }
    if !reordered && next < args.len() {
        let extra: Vec<String> = args[next..]
            .iter()
            .map(|a| match a {
                Value::Nil => "<nil>".to_string(),
                a => format!("{}={}", go_type(a), go_fmt(a)),
            })
            .collect();
        let _ = write!(out, "%!(EXTRA {})", extra.join(", "));
    }
    out
}

fn format_one(d: &Directive, arg: &Value, out: &mut String) {
    match arg {
        Value::Float(f) if matches!(d.verb, 'v' | 'f' | 'F' | 'e' | 'E' | 'g' | 'G') => {
            if f.is_finite() {
                // Go's %v of a float64 is %g.
                let verb = if d.verb == 'v' { 'g' } else { d.verb };
                out.push_str(&gotmpl_printf(&d.text(verb), Some(arg)));
            } else {
                // Go pads infinities and NaN with spaces, never zeros.
                let plus = d.flags.contains('+');
                let space = d.flags.contains(' ');
                let s = if f.is_nan() {
                    match (plus, space) {
                        (true, _) => "+NaN",
                        (false, true) => " NaN",
                        _ => "NaN",
                    }
                } else if *f < 0.0 {
                    "-Inf"
                } else if space && !plus {
                    " Inf"
                } else {
                    "+Inf"
                };
                d.pad(s, out);
            }
        }
        Value::Float(f) => {
            let _ = write!(out, "%!{}(float64={})", d.verb, go_format_g(*f, None));
        }
        // Containers may hold floats: print them Go's way, then pad.
        Value::List(_) | Value::Map(_) if d.verb == 'v' => {
            out.push_str(&gotmpl_printf(&d.text('s'), Some(&string(go_fmt(arg)))));
        }
        _ => out.push_str(&gotmpl_printf(&d.text(d.verb), Some(arg))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn data(v: f64) -> TemplateData<'static> {
        TemplateData {
            labels: BTreeMap::from([("instance".into(), "a:9100".into())]),
            external_labels: BTreeMap::from([("dc".into(), "eu1".into())]),
            external_url: "http://x/prom".into(),
            value: v,
            ..TemplateData::default()
        }
    }

    fn ex(s: &str, v: f64) -> String {
        Template::parse(s).unwrap().expand(&data(v)).unwrap()
    }

    #[test]
    fn variables_and_fields() {
        assert_eq!(
            ex("{{ $labels.instance }} is {{ $value }}", 0.5),
            "a:9100 is 0.5"
        );
        assert_eq!(ex("{{ .Labels.instance }}/{{ .Value }}", 3.0), "a:9100/3");
        assert_eq!(
            ex("{{$externalLabels.dc}} {{ $externalURL }}", 1.0),
            "eu1 http://x/prom"
        );
        assert_eq!(ex("{{ $labels.missing }}x", 1.0), "x");
        assert_eq!(ex("{{ index $labels \"missing\" }}x", 1.0), "x");
        assert_eq!(
            ex("{{ if eq $labels.missing \"\" }}empty{{ end }}", 1.0),
            "empty"
        );
        assert_eq!(ex("a {{- $value -}} b", 1.0), "a1b");
        assert_eq!(ex("{{/* c */}}z", 1.0), "z");
        assert_eq!(ex("{{ $x := $labels.instance }}{{ $x }}", 1.0), "a:9100");
        assert_eq!(
            ex(
                "{{ range $k, $v := $labels }}{{ $k }}={{ $v }};{{ end }}",
                1.0
            ),
            "instance=a:9100;"
        );
        assert_eq!(
            ex("{{ with $labels.instance }}[{{ . }}]{{ end }}", 1.0),
            "[a:9100]"
        );
        assert_eq!(
            ex(
                "{{ define \"x\" }}<{{ .instance }}>{{ end }}{{ template \"x\" $labels }}",
                1.0
            ),
            "<a:9100>"
        );
        assert_eq!(
            ex("{{ externalURL }} {{ pathPrefix }}", 1.0),
            "http://x/prom /prom"
        );
    }

    #[test]
    fn go_number_printing() {
        assert_eq!(go_format_g(1_000_000.0, None), "1e+06");
        assert_eq!(go_format_g(123_456.0, None), "123456");
        assert_eq!(go_format_g(1_234_567.0, None), "1.234567e+06");
        assert_eq!(go_format_g(0.0001, None), "0.0001");
        assert_eq!(go_format_g(0.00001, None), "1e-05");
        assert_eq!(go_format_g(100.0, Some(4)), "100");
        assert_eq!(go_format_g(12345.0, Some(4)), "1.234e+04");
        assert_eq!(go_format_g(1.5, Some(4)), "1.5");
        assert_eq!(ex("{{ $value }}", 1e6), "1e+06");
        assert_eq!(ex("{{ $value }}", f64::INFINITY), "+Inf");
        assert_eq!(ex("{{ $value }}", f64::NEG_INFINITY), "-Inf");
        assert_eq!(ex("{{ $value }}", f64::NAN), "NaN");
        assert_eq!(ex("{{ $value }}", 0.1), "0.1");
        assert_eq!(ex("{{ 1e21 }} {{ 0.00001 }} {{ 3 }}", 1.0), "1e+21 1e-05 3");
        assert_eq!(ex("{{ print $value 2 \"s\" }}", 1e6), "1e+06 2s");
        assert_eq!(
            ex(
                "{{ printf \"%v|%5.1f|%g\" $value $value $value }}",
                f64::INFINITY
            ),
            "+Inf| +Inf|+Inf"
        );
        assert_eq!(
            ex("{{ printf \"%v %d\" $value $value }}", 1e6),
            "1e+06 %!d(float64=1e+06)"
        );
    }

    #[test]
    fn humanize_family() {
        assert_eq!(ex("{{ humanize $value }}", 1234.0), "1.234k");
        assert_eq!(ex("{{ $value | humanize }}", 0.001), "1m");
        assert_eq!(ex("{{ humanize 0 }}", 1.0), "0");
        assert_eq!(ex("{{ humanize1024 $value }}", 1024.0), "1ki");
        assert_eq!(ex("{{ humanizePercentage $value }}", 0.256), "25.6%");
        assert_eq!(ex("{{ humanizeDuration $value }}", 90061.0), "1d 1h 1m 1s");
        assert_eq!(ex("{{ humanizeDuration $value }}", 0.25), "250ms");
        assert_eq!(ex("{{ humanizeDuration $value }}", 5.5), "5.5s");
        assert_eq!(ex("{{ humanize \"2048\" }}", 1.0), "2.048k");
        assert_eq!(
            ex("{{ humanizeTimestamp 1435065584.12 }}", 1.0),
            "2015-06-23 13:19:44.12 +0000 UTC"
        );
        assert_eq!(ex("{{ parseDuration \"1m30s\" }}", 1.0), "90");
        let e = Template::parse("{{ humanize \"x\" }}")
            .unwrap()
            .expand(&data(1.0));
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("error calling humanize: strconv.ParseFloat"));
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(1000), ")".repeat(1000));
        assert!(Template::parse(&deep).is_err());
        let deep = format!("{}x{}", "{{ if 1 }}".repeat(1000), "{{ end }}".repeat(1000));
        assert!(Template::parse(&deep).is_err());
        let ok = format!("{}x{}", "{{ if 1 }}".repeat(10), "{{ end }}".repeat(10));
        assert_eq!(
            Template::parse(&ok).unwrap().expand(&data(1.0)).unwrap(),
            "x"
        );
        // Unbounded loops stop.
        let t = Template::parse("{{ range 100000000 }}x{{ end }}").unwrap();
        assert!(t.expand(&data(1.0)).is_err());
    }

    #[test]
    fn conditionals() {
        let t =
            "{{ if gt $value 0.9 }}critical{{ else if gt $value 0.5 }}warning{{ else }}ok{{ end }}";
        assert_eq!(ex(t, 0.95), "critical");
        assert_eq!(ex(t, 0.7), "warning");
        assert_eq!(ex(t, 0.1), "ok");
        assert_eq!(
            ex(
                "{{ if eq $labels.instance \"a:9100\" \"b\" }}yes{{ end }}",
                1.0
            ),
            "yes"
        );
        assert_eq!(ex("{{ if not $labels.missing }}none{{ end }}", 1.0), "none");
        assert_eq!(
            ex("{{ if and $value (lt $value 2.0) }}small{{ end }}", 1.0),
            "small"
        );
        assert_eq!(ex("{{ if $value }}t{{ else }}f{{ end }}", 0.0), "f");
        assert_eq!(
            ex(
                "{{ reReplaceAll \"(.*):.*\" \"$1\" $labels.instance }}",
                1.0
            ),
            "a"
        );
        assert_eq!(ex("{{ $labels.instance | stripPort }}", 1.0), "a");
        assert_eq!(
            ex("{{ \"node1.example.com:9100\" | stripDomain }}", 1.0),
            "node1:9100"
        );
        assert_eq!(
            ex("{{ \"10.0.0.1:9100\" | stripDomain }}", 1.0),
            "10.0.0.1:9100"
        );
        assert_eq!(
            ex("{{ humanizeTimestamp 1435065584.128 }}", 1.0),
            "2015-06-23 13:19:44.128 +0000 UTC"
        );
        assert_eq!(
            ex("{{ humanizeTimestamp 0 }}", 1.0),
            "1970-01-01 00:00:00 +0000 UTC"
        );
        assert_eq!(
            ex("{{ if match \"^a:\" $labels.instance }}m{{ end }}", 1.0),
            "m"
        );
        // Go compares a float64 with an int as an error.
        let e = Template::parse("{{ if gt $labels.instance 1.0 }}x{{ end }}")
            .unwrap()
            .expand(&data(1.0));
        assert!(e.is_err());
    }

    #[test]
    fn printf_and_case() {
        assert_eq!(ex("{{ printf \"%.2f\" $value }}", 1.0 / 3.0), "0.33");
        assert_eq!(ex("{{ printf \"%s=%d\" \"a\" 3 }}", 1.0), "a=3");
        assert_eq!(
            ex(
                "{{ printf \"%.3f|%5d|%-4s|%q|%%\" 3.14159 42 \"ab\" \"x\" }}",
                1.0
            ),
            "3.142|   42|ab  |\"x\"|%"
        );
        assert_eq!(ex("{{ printf \"%[2]s %[1]s\" \"a\" \"b\" }}", 1.0), "b a");
        assert_eq!(ex("{{ printf \"%*d\" 4 7 }}", 1.0), "   7");
        assert_eq!(ex("{{ printf \"%d %d\" 1 }}", 1.0), "1 %!d(MISSING)");
        assert_eq!(ex("{{ printf \"%d\" 1 2 }}", 1.0), "1%!(EXTRA int=2)");
        assert_eq!(ex("{{ printf \"%\" }}", 1.0), "%!(NOVERB)");
        assert_eq!(ex("{{ $labels.instance | toUpper }}", 1.0), "A:9100");
        assert_eq!(ex("{{ toLower \"AB\" }}", 1.0), "ab");
        assert_eq!(ex("{{ title \"hello world\" }}", 1.0), "Hello World");
        assert_eq!(
            ex("{{ graphLink \"up == 0\" }} {{ tableLink \"a\" }}", 1.0),
            "/graph?g0.expr=up+%3D%3D+0&g0.tab=0 /graph?g0.expr=a&g0.tab=1"
        );
        assert_eq!(
            ex(
                "{{ with args 1 \"x\" }}{{ .arg0 }}{{ .arg1 }}{{ end }}",
                1.0
            ),
            "1x"
        );
    }

    fn sample(instance: &str, v: f64) -> QuerySample {
        QuerySample {
            labels: BTreeMap::from([
                ("__name__".into(), "up".into()),
                ("instance".into(), instance.into()),
            ]),
            value: v,
        }
    }

    #[test]
    fn queries() {
        let calls = std::cell::Cell::new(0);
        let q = |q: &str| {
            calls.set(calls.get() + 1);
            match q {
                "up" => Ok(vec![sample("b", 2048.0), sample("a", 1.0)]),
                "none" => Ok(Vec::new()),
                other => Err(format!("bad query {other:?}")),
            }
        };
        let d = TemplateData {
            query: Some(&q),
            ..data(1.0)
        };
        let run = |s: &str| Template::parse(s).unwrap().expand(&d);
        assert_eq!(
            run("{{ with query \"up\" }}{{ . | first | value | humanize }}{{ end }}").unwrap(),
            "2.048k"
        );
        assert_eq!(
            run("{{ range query \"up\" | sortByLabel \"instance\" }}{{ .Labels.instance }}={{ .Value }} {{ end }}")
                .unwrap(),
            "a=1 b=2048 "
        );
        assert_eq!(
            run("{{ (query \"up\" | first).Labels.instance }} {{ query \"up\" | first | label \"instance\" }}").unwrap(),
            "b b"
        );
        assert_eq!(
            run("{{ with query \"none\" }}x{{ else }}empty{{ end }}").unwrap(),
            "empty"
        );
        // A query built from the alert's labels, nested in another.
        assert_eq!(
            run("{{ with printf \"up{instance=%q}\" $labels.instance | query }}{{ . | len }}{{ end }}{{ query \"up\" | len }}")
                .unwrap_err()
                .to_string(),
            "error executing template __alert: template: __alert: error calling query: bad query \"up{instance=\\\"a:9100\\\"}\""
        );
        let e = run("{{ query \"none\" | first }}").unwrap_err();
        assert!(
            e.to_string()
                .ends_with("error calling first: first() called on vector with no elements"),
            "{e}"
        );
        // Without an engine, `query` fails rather than inventing data.
        let e = Template::parse("{{ query \"up\" }}")
            .unwrap()
            .expand(&data(1.0));
        assert!(e.is_err());
    }

    #[test]
    fn load_errors_are_gos() {
        let e = Template::parse_for_alert("A", "{{ nofunc 1 }}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "template: __alert_A:1: function \"nofunc\" not defined"
        );
        let e = Template::parse_for_alert("A", "x\n{{ $foo }}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "template: __alert_A:2: undefined variable \"$foo\""
        );
        let e =
            Template::parse_for_alert("A", "{{ if 1 }}{{ $x := 1 }}{{ end }}{{ $x }}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "template: __alert_A:1: undefined variable \"$x\""
        );
        let e = Template::parse_for_alert("A", "{{ if $value }}\n{{ range $labels }}{{ end }}x")
            .unwrap_err();
        assert_eq!(e.to_string(), "template: __alert_A:2: unexpected EOF");
        let e = Template::parse_for_alert("A", "x{{ \"{{if}}\" }}{{/* {{if}} */}}{{- end }}")
            .unwrap_err();
        assert_eq!(e.to_string(), "template: __alert_A:1: unexpected {{end}}");
        assert!(Template::parse("{{ else }}").is_err());
        assert!(Template::parse("{{ with 1 }}").is_err());
        assert!(Template::parse("{{ define \"a\" }}x").is_err());
        assert_eq!(
            ex("{{ if 1 }}{{ `}}{{end` }}{{ else }}{{ end }}{{-3}}", 1.0),
            "}}{{end-3"
        );
        assert!(Template::parse("{{ $value").is_err());
        assert!(Template::parse("{{ define \"a\" }}{{ $labels }}{{ end }}").is_err());
    }
}
