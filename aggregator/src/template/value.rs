//! Go values as templates see them: their Go type names, conversions,
//! map lookups under `missingkey=zero`, and `fmt.Sprint`.

use std::collections::BTreeMap;
use std::sync::Arc;

use gotmpl::Value;
use nodewatch_proto::gocompat::{format_float_g, parse_float};

pub(super) fn string(s: String) -> Value {
    Value::String(Arc::from(s))
}

/// Exactly `N` arguments, as Go checks a function's arity.
pub(super) fn args<'a, const N: usize>(f: &str, a: &'a [Value]) -> Result<[&'a Value; N], String> {
    if a.len() != N {
        return Err(format!(
            "wrong number of args for {f}: want {N} got {}",
            a.len()
        ));
    }
    Ok(std::array::from_fn(|i| &a[i]))
}

/// Go's name for a value's type, for error messages.
pub(super) fn go_type(v: &Value) -> &'static str {
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

pub(super) fn want_str(v: &Value) -> Result<&str, String> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(format!(
            "wrong type for value; expected string; got {}",
            go_type(other)
        )),
    }
}

/// `convertToFloat`: numbers, and strings through `strconv.ParseFloat`.
pub(super) fn to_float(v: &Value) -> Result<f64, String> {
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
pub(super) fn is_label_map(m: &BTreeMap<Arc<str>, Value>) -> bool {
    m.values().all(|v| matches!(v, Value::String(_)))
}

/// The template data and query samples stand for Go structs: a field they
/// lack is an error.
pub(super) fn is_struct(m: &BTreeMap<Arc<str>, Value>) -> bool {
    matches!(m.get("Labels"), Some(Value::Map(_)))
}

/// The value of key `k` of map `m` under `missingkey=zero`.
pub(super) fn map_get(m: &BTreeMap<Arc<str>, Value>, k: &str) -> Result<Value, String> {
    match m.get(k) {
        Some(v) => Ok(v.clone()),
        None if is_struct(m) => Err(format!("can't evaluate field {k} in type struct")),
        None if is_label_map(m) => Ok(Value::String(Arc::from(""))),
        None => Ok(Value::Nil),
    }
}

/// `fmt.Sprint` (`fmt.Sprintln` with `line`).
pub(super) fn go_sprint(a: &[Value], line: bool) -> String {
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
pub(super) fn go_fmt(v: &Value) -> String {
    match v {
        Value::Nil => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Uint(u) => u.to_string(),
        Value::Float(f) => format_float_g(*f, None),
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

/// The reason of a `gotmpl` execution error, without its prefix.
pub(super) fn exec_reason(e: &gotmpl::TemplateError) -> String {
    let s = e.to_string();
    match s.strip_prefix("execution error: ") {
        Some(rest) => rest.to_string(),
        None => s,
    }
}
