//! Prometheus' template functions and the hidden helpers the adjusted
//! trees call (`__field`, `__print`).

use std::sync::{Arc, OnceLock};

use gotmpl::{FuncMap, Value};
use nodewatch_proto::gocompat::{format_float_g, parse_duration, query_escape, rfc3339_ms};

use super::context::with_ctx;
use super::printf::printf;
use super::value::{
    args, exec_reason, go_fmt, go_sprint, go_type, is_struct, map_get, string, to_float, want_str,
};

type Func = fn(&[Value]) -> Result<Value, String>;

pub(super) fn funcs() -> &'static FuncMap {
    static FUNCS: OnceLock<FuncMap> = OnceLock::new();
    FUNCS.get_or_init(build_funcs)
}

/// How a function takes its arguments: as template values, or as exactly
/// one string or one number (converted as Prometheus' `convertToFloat`).
#[derive(Clone, Copy)]
enum Call {
    Values(Func),
    Str(fn(&str) -> String),
    Float(fn(f64) -> Result<String, String>),
}

impl Call {
    fn call(self, name: &str, a: &[Value]) -> Result<Value, String> {
        match self {
            Call::Values(f) => f(a),
            Call::Str(f) => {
                let [s] = args::<1>(name, a)?;
                Ok(string(f(want_str(s)?)))
            }
            Call::Float(f) => {
                let [v] = args::<1>(name, a)?;
                Ok(string(f(to_float(v)?)?))
            }
        }
    }
}

/// Prometheus' functions, whose errors read `error calling <name>: …`.
const CALLS: &[(&str, Call)] = &[
    ("index", Call::Values(index)),
    ("printf", Call::Values(printf)),
    ("query", Call::Values(query)),
    ("first", Call::Values(first)),
    (
        "label",
        Call::Values(|a| {
            let [l, s] = args::<2>("label", a)?;
            let l = want_str(l)?;
            Ok(string(sample_label(s, l)?))
        }),
    ),
    (
        "value",
        Call::Values(|a| {
            let [s] = args::<1>("value", a)?;
            sample_field(s, "Value")
        }),
    ),
    (
        "strvalue",
        Call::Values(|a| {
            let [s] = args::<1>("strvalue", a)?;
            Ok(string(sample_label(s, "__value__")?))
        }),
    ),
    ("sortByLabel", Call::Values(sort_by_label)),
    (
        "args",
        Call::Values(|a| {
            Ok(Value::Map(Arc::new(
                a.iter()
                    .enumerate()
                    .map(|(i, v)| (Arc::from(format!("arg{i}").as_str()), v.clone()))
                    .collect(),
            )))
        }),
    ),
    (
        "match",
        Call::Values(|a| {
            let [p, t] = args::<2>("match", a)?;
            let re = regex::Regex::new(want_str(p)?).map_err(|e| e.to_string())?;
            Ok(Value::Bool(re.is_match(want_str(t)?)))
        }),
    ),
    (
        "reReplaceAll",
        Call::Values(|a| {
            let [p, r, t] = args::<3>("reReplaceAll", a)?;
            let re = regex::Regex::new(want_str(p)?).map_err(|e| e.to_string())?;
            Ok(string(
                re.replace_all(want_str(t)?, want_str(r)?).into_owned(),
            ))
        }),
    ),
    ("safeHtml", Call::Str(str::to_string)),
    ("title", Call::Str(title)),
    ("toUpper", Call::Str(str::to_uppercase)),
    ("toLower", Call::Str(str::to_lowercase)),
    (
        "graphLink",
        Call::Str(|e| format!("/graph?g0.expr={}&g0.tab=0", query_escape(e))),
    ),
    (
        "tableLink",
        Call::Str(|e| format!("/graph?g0.expr={}&g0.tab=1", query_escape(e))),
    ),
    ("urlQueryEscape", Call::Str(query_escape)),
    ("stripPort", Call::Str(strip_port)),
    ("stripDomain", Call::Str(strip_domain)),
    ("humanize", Call::Float(|v| Ok(humanize(v)))),
    ("humanize1024", Call::Float(|v| Ok(humanize1024(v)))),
    (
        "humanizeDuration",
        Call::Float(|v| Ok(humanize_duration(v))),
    ),
    (
        "humanizePercentage",
        Call::Float(|v| Ok(format!("{}%", format_float_g(v * 100.0, Some(4))))),
    ),
    (
        "humanizeTimestamp",
        Call::Float(|v| {
            if v.is_nan() || v.is_infinite() {
                return Ok(format_float_g(v, Some(4)));
            }
            go_time(v)
        }),
    ),
    (
        "toTime",
        Call::Float(|v| {
            if v.is_nan() || v.is_infinite() {
                return Err("value is NaN or Inf".into());
            }
            go_time(v)
        }),
    ),
    (
        "now",
        Call::Values(|a| {
            args::<0>("now", a)?;
            with_ctx(|c| Ok(Value::Float(c.time_ms as f64 / 1000.0)))
        }),
    ),
    (
        "externalURL",
        Call::Values(|a| {
            args::<0>("externalURL", a)?;
            with_ctx(|c| Ok(string(c.external_url.clone())))
        }),
    ),
    (
        "pathPrefix",
        Call::Values(|a| {
            args::<0>("pathPrefix", a)?;
            with_ctx(|c| Ok(string(url_path(&c.external_url).to_string())))
        }),
    ),
    (
        "parseDuration",
        Call::Values(|a| {
            let [d] = args::<1>("parseDuration", a)?;
            let ms = parse_duration(want_str(d)?)?;
            Ok(Value::Float(ms as f64 / 1000.0))
        }),
    ),
];

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
    for &(name, f) in CALLS {
        m.insert(
            name.into(),
            Arc::new(move |args: &[Value]| {
                f.call(name, args).map_err(|reason| {
                    gotmpl::TemplateError::Exec(format!("error calling {name}: {reason}"))
                })
            }),
        );
    }
    m
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
            format_float_g(v, None)
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
    let g4 = |v: f64| format_float_g(v, Some(4));
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
        return format_float_g(v, Some(4));
    }
    let mut prefix = "";
    for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
        if v.abs() < 1024.0 {
            break;
        }
        prefix = p;
        v /= 1024.0;
    }
    format!("{}{prefix}", format_float_g(v, Some(4)))
}

#[allow(
    clippy::many_single_char_names,
    reason = "d, h, m, s, ms as in Prometheus' humanizeDuration"
)]
fn humanize_duration(mut v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return format_float_g(v, Some(4));
    }
    if v == 0.0 {
        return format!("{}s", format_float_g(v, Some(4)));
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
        return format!("{sign}{}s", format_float_g(v, Some(4)));
    }
    let mut prefix = "";
    for p in SI_SMALL {
        if v.abs() >= 1.0 {
            break;
        }
        prefix = p;
        v *= 1000.0;
    }
    format!("{}{prefix}s", format_float_g(v, Some(4)))
}
