//! The Go-template subset Prometheus rule labels and annotations use.
//!
//! Supported: text with `{{ … }}` actions (and `{{-`/`-}}` trimming,
//! `{{/* comments */}}`); pipelines `a | f b`; the variables Prometheus
//! defines (`$labels`, `$value`, `$externalLabels`, `$externalURL`) and the
//! same data as fields (`.Labels.x`, `.Value`, `.ExternalLabels.x`,
//! `.ExternalURL`); string, raw-string and number literals; the functions
//! `humanize humanize1024 humanizePercentage humanizeDuration printf
//! toUpper toLower title`. Control structures (`if`, `range`, …) and
//! Prometheus' query functions are refused at load time by name.
//!
//! Formatting follows Go: `{{ $value }}` prints like `fmt.Sprint(float64)`
//! and the humanize functions are ported from `prometheus/template`.

// The formatting code mirrors Go's fmt/strconv, with their short names.
#![allow(clippy::many_single_char_names)]

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A template that does not parse or cannot be expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Malformed template text.
    #[error("template: {0}")]
    Syntax(String),
    /// An action, function or variable outside the supported subset.
    #[error("template: unsupported {0}")]
    Unsupported(String),
    /// A function failed on its arguments.
    #[error("template: error calling {func}: {reason}")]
    Call {
        /// The function.
        func: String,
        /// Why.
        reason: String,
    },
}

/// What a template can refer to (`template.AlertTemplateData`).
#[derive(Debug, Clone, Default)]
pub struct TemplateData {
    /// The alert's labels (`$labels`, `.Labels`).
    pub labels: BTreeMap<String, String>,
    /// Configured external labels (`$externalLabels`).
    pub external_labels: BTreeMap<String, String>,
    /// Configured external URL (`$externalURL`).
    pub external_url: String,
    /// The sample value (`$value`, `.Value`).
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    /// `$name.f1.f2`
    Var(String, Vec<String>),
    /// `.f1.f2` (or `.` alone)
    Dot(Vec<String>),
    Str(String),
    Num(f64),
    Bool(bool),
    Func(String),
    Sub(Pipeline),
}

type Pipeline = Vec<Vec<Operand>>;

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Text(String),
    Action(Pipeline),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    nodes: Vec<Node>,
}

const FUNCS: &[&str] = &[
    "humanize",
    "humanize1024",
    "humanizePercentage",
    "humanizeDuration",
    "printf",
    "toUpper",
    "toLower",
    "title",
];

const KEYWORDS: &[&str] = &[
    "if", "else", "end", "range", "with", "define", "template", "block", "break", "continue",
];

const VARS: &[&str] = &["labels", "value", "externalLabels", "externalURL"];

const FIELDS: &[&str] = &["Labels", "Value", "ExternalLabels", "ExternalURL"];

impl Template {
    /// Parses `src`, refusing anything outside the supported subset.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut nodes = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(open) = rest.find("{{") {
            let mut text = &rest[..open];
            if trim_next {
                text = text.trim_start();
            }
            let after = &rest[open + 2..];
            let trim_left =
                after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
            if trim_left {
                text = text.trim_end();
            }
            if !text.is_empty() {
                nodes.push(Node::Text(text.to_string()));
            }
            let body_start = usize::from(trim_left);
            let close =
                find_close(after).ok_or_else(|| TemplateError::Syntax("unclosed action".into()))?;
            let mut body = &after[body_start..close];
            trim_next = false;
            if body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-") {
                body = &body[..body.len() - 1];
                trim_next = true;
            }
            rest = &after[close + 2..];
            let body = body.trim();
            if body.starts_with("/*") {
                if !body.ends_with("*/") {
                    return Err(TemplateError::Syntax("unclosed comment".into()));
                }
                continue;
            }
            let toks = lex(body)?;
            let mut p = Parser {
                toks: &toks,
                pos: 0,
            };
            let pipe = p.pipeline()?;
            if p.pos != toks.len() {
                return Err(TemplateError::Syntax(format!(
                    "unexpected {:?} in action",
                    toks[p.pos]
                )));
            }
            if pipe.is_empty() {
                return Err(TemplateError::Syntax("missing value for command".into()));
            }
            nodes.push(Node::Action(pipe));
        }
        let mut text = rest;
        if trim_next {
            text = text.trim_start();
        }
        if !text.is_empty() {
            nodes.push(Node::Text(text.to_string()));
        }
        Ok(Self { nodes })
    }

    /// A template that expands to `text` unchanged.
    #[must_use]
    pub fn literal(text: &str) -> Self {
        Self {
            nodes: vec![Node::Text(text.to_string())],
        }
    }

    /// Expands the template with `data`.
    pub fn expand(&self, data: &TemplateData) -> Result<String, TemplateError> {
        let mut out = String::new();
        for n in &self.nodes {
            match n {
                Node::Text(t) => out.push_str(t),
                Node::Action(p) => out.push_str(&eval_pipeline(p, data)?.print()),
            }
        }
        Ok(out)
    }
}

/// Position of the `}}` closing an action, skipping string literals.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
            }
            b'}' if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Pipe,
}

fn lex(s: &str) -> Result<Vec<Tok>, TemplateError> {
    let mut toks = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                toks.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                toks.push(Tok::RParen);
                i += 1;
            }
            '|' => {
                toks.push(Tok::Pipe);
                i += 1;
            }
            '"' => {
                let mut v = String::new();
                i += 1;
                loop {
                    let Some(&c) = chars.get(i) else {
                        return Err(TemplateError::Syntax("unterminated quoted string".into()));
                    };
                    i += 1;
                    match c {
                        '"' => break,
                        '\\' => {
                            let Some(&e) = chars.get(i) else {
                                return Err(TemplateError::Syntax(
                                    "unterminated quoted string".into(),
                                ));
                            };
                            i += 1;
                            v.push(match e {
                                'n' => '\n',
                                't' => '\t',
                                'r' => '\r',
                                '\\' => '\\',
                                '"' => '"',
                                '\'' => '\'',
                                other => {
                                    return Err(TemplateError::Syntax(format!(
                                        "unsupported escape \\{other} in string"
                                    )))
                                }
                            });
                        }
                        c => v.push(c),
                    }
                }
                toks.push(Tok::Str(v));
            }
            '`' => {
                let start = i + 1;
                let end = chars[start..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| {
                        TemplateError::Syntax("unterminated raw quoted string".into())
                    })?;
                toks.push(Tok::Str(chars[start..start + end].iter().collect()));
                i = start + end + 1;
            }
            ':' | '=' => {
                return Err(TemplateError::Unsupported("variable assignment".into()));
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | '|' | '"' | '`' | ':' | '=')
                {
                    i += 1;
                }
                toks.push(Tok::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(toks)
}

struct Parser<'a> {
    toks: &'a [Tok],
    pos: usize,
}

impl Parser<'_> {
    fn pipeline(&mut self) -> Result<Pipeline, TemplateError> {
        let mut cmds = Vec::new();
        loop {
            let mut cmd = Vec::new();
            while let Some(t) = self.toks.get(self.pos) {
                match t {
                    Tok::Pipe | Tok::RParen => break,
                    Tok::LParen => {
                        self.pos += 1;
                        let sub = self.pipeline()?;
                        if self.toks.get(self.pos) != Some(&Tok::RParen) {
                            return Err(TemplateError::Syntax("unclosed left paren".into()));
                        }
                        self.pos += 1;
                        cmd.push(Operand::Sub(sub));
                    }
                    Tok::Str(s) => {
                        cmd.push(Operand::Str(s.clone()));
                        self.pos += 1;
                    }
                    Tok::Word(w) => {
                        cmd.push(word_operand(w)?);
                        self.pos += 1;
                    }
                }
            }
            if cmd.is_empty() {
                if cmds.is_empty() && self.toks.get(self.pos) != Some(&Tok::Pipe) {
                    return Ok(cmds);
                }
                return Err(TemplateError::Syntax("missing command in pipeline".into()));
            }
            cmds.push(cmd);
            if self.toks.get(self.pos) == Some(&Tok::Pipe) {
                self.pos += 1;
            } else {
                return Ok(cmds);
            }
        }
    }
}

fn word_operand(w: &str) -> Result<Operand, TemplateError> {
    if let Some(v) = w.strip_prefix('$') {
        let mut parts = v.split('.');
        let name = parts.next().unwrap_or_default().to_string();
        if !VARS.contains(&name.as_str()) {
            return Err(TemplateError::Unsupported(format!("variable ${name}")));
        }
        return Ok(Operand::Var(name, parts.map(str::to_string).collect()));
    }
    if let Some(f) = w.strip_prefix('.') {
        let fields: Vec<String> = if f.is_empty() {
            Vec::new()
        } else {
            f.split('.').map(str::to_string).collect()
        };
        if let Some(first) = fields.first() {
            if !FIELDS.contains(&first.as_str()) {
                return Err(TemplateError::Unsupported(format!("field .{first}")));
            }
        }
        return Ok(Operand::Dot(fields));
    }
    if w == "true" || w == "false" {
        return Ok(Operand::Bool(w == "true"));
    }
    if w.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+') {
        return w
            .parse::<f64>()
            .map(Operand::Num)
            .map_err(|_| TemplateError::Syntax(format!("bad number syntax: {w:?}")));
    }
    if KEYWORDS.contains(&w) {
        return Err(TemplateError::Unsupported(format!("action \"{w}\"")));
    }
    if FUNCS.contains(&w) {
        return Ok(Operand::Func(w.to_string()));
    }
    Err(TemplateError::Unsupported(format!("function \"{w}\"")))
}

#[derive(Debug, Clone)]
enum TVal {
    Str(String),
    Num(f64),
    Bool(bool),
    Map(BTreeMap<String, String>),
    Data,
}

impl TVal {
    fn print(&self) -> String {
        match self {
            TVal::Str(s) => s.clone(),
            TVal::Num(v) => go_format_g(*v, None),
            TVal::Bool(b) => b.to_string(),
            TVal::Map(m) => {
                let inner: Vec<String> = m.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("map[{}]", inner.join(" "))
            }
            TVal::Data => "{}".into(),
        }
    }

    fn as_float(&self, func: &str) -> Result<f64, TemplateError> {
        match self {
            TVal::Num(v) => Ok(*v),
            TVal::Str(s) => {
                crate::promql::value_parse_float(s).ok_or_else(|| TemplateError::Call {
                    func: func.into(),
                    reason: format!("strconv.ParseFloat: parsing {s:?}: invalid syntax"),
                })
            }
            _ => Err(TemplateError::Call {
                func: func.into(),
                reason: "can't convert value to float".into(),
            }),
        }
    }
}

fn field(v: TVal, f: &str, data: &TemplateData) -> TVal {
    match v {
        TVal::Map(m) => TVal::Str(m.get(f).cloned().unwrap_or_default()),
        TVal::Data => match f {
            "Labels" => TVal::Map(data.labels.clone()),
            "ExternalLabels" => TVal::Map(data.external_labels.clone()),
            "ExternalURL" => TVal::Str(data.external_url.clone()),
            _ => TVal::Num(data.value),
        },
        // Field of a non-map: Go fails; with `missingkey=zero` an empty
        // string is the closest harmless outcome.
        _ => TVal::Str(String::new()),
    }
}

fn eval_operand(o: &Operand, data: &TemplateData) -> Result<TVal, TemplateError> {
    Ok(match o {
        Operand::Var(name, fields) => {
            let base = match name.as_str() {
                "labels" => TVal::Map(data.labels.clone()),
                "externalLabels" => TVal::Map(data.external_labels.clone()),
                "externalURL" => TVal::Str(data.external_url.clone()),
                _ => TVal::Num(data.value),
            };
            fields.iter().fold(base, |v, f| field(v, f, data))
        }
        Operand::Dot(fields) => fields.iter().fold(TVal::Data, |v, f| field(v, f, data)),
        Operand::Str(s) => TVal::Str(s.clone()),
        Operand::Num(n) => TVal::Num(*n),
        Operand::Bool(b) => TVal::Bool(*b),
        Operand::Sub(p) => eval_pipeline(p, data)?,
        Operand::Func(f) => call(f, Vec::new())?,
    })
}

fn eval_pipeline(p: &Pipeline, data: &TemplateData) -> Result<TVal, TemplateError> {
    let mut piped: Option<TVal> = None;
    for cmd in p {
        let v = match &cmd[0] {
            Operand::Func(f) => {
                let mut args = cmd[1..]
                    .iter()
                    .map(|o| eval_operand(o, data))
                    .collect::<Result<Vec<_>, _>>()?;
                if let Some(pv) = piped.take() {
                    args.push(pv);
                }
                call(f, args)?
            }
            o => {
                if cmd.len() > 1 || piped.is_some() {
                    return Err(TemplateError::Syntax(
                        "can't give argument to non-function".into(),
                    ));
                }
                eval_operand(o, data)?
            }
        };
        piped = Some(v);
    }
    piped.ok_or_else(|| TemplateError::Syntax("empty pipeline".into()))
}

fn one_arg(f: &str, args: Vec<TVal>) -> Result<TVal, TemplateError> {
    let n = args.len();
    let mut it = args.into_iter();
    match (it.next(), n) {
        (Some(a), 1) => Ok(a),
        _ => Err(TemplateError::Call {
            func: f.into(),
            reason: format!("wrong number of args for {f}: want 1 got {n}"),
        }),
    }
}

const SI_BIG: [&str; 8] = ["k", "M", "G", "T", "P", "E", "Z", "Y"];
const SI_SMALL: [&str; 8] = ["m", "u", "n", "p", "f", "a", "z", "y"];

fn call(f: &str, args: Vec<TVal>) -> Result<TVal, TemplateError> {
    let g4 = |v: f64| go_format_g(v, Some(4));
    Ok(TVal::Str(match f {
        "humanize" => {
            let mut v = one_arg(f, args)?.as_float(f)?;
            if v == 0.0 || v.is_nan() || v.is_infinite() {
                g4(v)
            } else if v.abs() >= 1.0 {
                let mut prefix = "";
                for p in SI_BIG {
                    if v.abs() < 1000.0 {
                        break;
                    }
                    prefix = p;
                    v /= 1000.0;
                }
                format!("{}{prefix}", g4(v))
            } else {
                let mut prefix = "";
                for p in SI_SMALL {
                    if v.abs() >= 1.0 {
                        break;
                    }
                    prefix = p;
                    v *= 1000.0;
                }
                format!("{}{prefix}", g4(v))
            }
        }
        "humanize1024" => {
            let mut v = one_arg(f, args)?.as_float(f)?;
            if v.abs() <= 1.0 || v.is_nan() || v.is_infinite() {
                g4(v)
            } else {
                let mut prefix = "";
                for p in ["ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"] {
                    if v.abs() < 1024.0 {
                        break;
                    }
                    prefix = p;
                    v /= 1024.0;
                }
                format!("{}{prefix}", g4(v))
            }
        }
        "humanizePercentage" => {
            let v = one_arg(f, args)?.as_float(f)?;
            format!("{}%", g4(v * 100.0))
        }
        "humanizeDuration" => humanize_duration(one_arg(f, args)?.as_float(f)?),
        "toUpper" => one_arg(f, args)?.print().to_uppercase(),
        "toLower" => one_arg(f, args)?.print().to_lowercase(),
        "title" => {
            let s = one_arg(f, args)?.print();
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
        "printf" => {
            let mut it = args.into_iter();
            let Some(TVal::Str(fmt)) = it.next() else {
                return Err(TemplateError::Call {
                    func: f.into(),
                    reason: "first argument must be a format string".into(),
                });
            };
            go_sprintf(&fmt, &it.collect::<Vec<_>>())
        }
        other => return Err(TemplateError::Unsupported(format!("function \"{other}\""))),
    }))
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

/// Largest `printf` width or precision honoured: more is never useful in
/// an alert and would let one template allocate without bound.
const MAX_PRINTF_WIDTH: usize = 1024;

/// A subset of Go's `fmt.Sprintf`: verbs `v s d f e g q x %` with flags,
/// width and precision.
fn go_sprintf(fmt: &str, args: &[TVal]) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    let mut ai = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut flags = String::new();
        while let Some(&f) = chars.peek() {
            if "+-# 0".contains(f) {
                flags.push(f);
                chars.next();
            } else {
                break;
            }
        }
        let mut width = String::new();
        while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(d);
            chars.next();
        }
        let mut prec: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut p = String::new();
            while let Some(&d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                p.push(d);
                chars.next();
            }
            // Bounded so a template cannot ask for gigabytes of padding.
            prec = Some(p.parse::<usize>().unwrap_or(0).min(MAX_PRINTF_WIDTH));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(ai) else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        ai += 1;
        let s = match (verb, arg) {
            ('d', TVal::Num(v)) if v.fract() == 0.0 && v.is_finite() => format!("{}", *v as i64),
            ('d', TVal::Num(v)) => format!("%!d(float64={})", go_format_g(*v, None)),
            ('f' | 'F', a) => match a.as_float("printf") {
                Ok(v) if v.is_finite() => format!("{:.*}", prec.unwrap_or(6), v),
                Ok(v) => go_format_g(v, None),
                Err(_) => format!("%!f(string={})", a.print()),
            },
            ('e', a) => match a.as_float("printf") {
                Ok(v) => {
                    let s = format!("{:.*e}", prec.unwrap_or(6), v);
                    match s.split_once('e') {
                        Some((m, e)) => {
                            let e: i32 = e.parse().unwrap_or(0);
                            format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
                        }
                        None => s,
                    }
                }
                Err(_) => format!("%!e(string={})", a.print()),
            },
            ('g', TVal::Num(v)) => go_format_g(*v, prec),
            ('q', a) => crate::promql::value::go_quote(&a.print()),
            ('x', TVal::Num(v)) if v.fract() == 0.0 => format!("{:x}", *v as i64),
            ('x', a) => a.print().bytes().fold(String::new(), |mut acc, b| {
                let _ = write!(acc, "{b:02x}");
                acc
            }),
            ('s' | 'v', a) => match (a, prec) {
                (TVal::Str(s), Some(p)) => s.chars().take(p).collect(),
                _ => a.print(),
            },
            (v, a) => format!("%!{v}({})", a.print()),
        };
        let w: usize = width.parse::<usize>().unwrap_or(0).min(MAX_PRINTF_WIDTH);
        let pad = w.saturating_sub(s.chars().count());
        if flags.contains('-') {
            out.push_str(&s);
            out.push_str(&" ".repeat(pad));
        } else if flags.contains('0') && matches!(arg, TVal::Num(_)) {
            let (sign, body) = s.strip_prefix('-').map_or(("", s.as_str()), |b| ("-", b));
            out.push_str(sign);
            out.push_str(&"0".repeat(pad));
            out.push_str(body);
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&s);
        }
    }
    if ai < args.len() {
        out.push_str("%!(EXTRA ");
        let extra: Vec<String> = args[ai..].iter().map(TVal::print).collect();
        out.push_str(&extra.join(", "));
        out.push(')');
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn data(v: f64) -> TemplateData {
        TemplateData {
            labels: BTreeMap::from([("instance".into(), "a:9100".into())]),
            external_labels: BTreeMap::from([("dc".into(), "eu1".into())]),
            external_url: "http://x".into(),
            value: v,
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
            "eu1 http://x"
        );
        assert_eq!(ex("{{ $labels.missing }}x", 1.0), "x");
        assert_eq!(ex("a {{- $value -}} b", 1.0), "a1b");
        assert_eq!(ex("{{/* c */}}z", 1.0), "z");
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
    }

    #[test]
    fn printf_and_case() {
        assert_eq!(ex("{{ printf \"%.2f\" $value }}", 1.0 / 3.0), "0.33");
        assert_eq!(ex("{{ printf \"%s=%d\" \"a\" 3 }}", 1.0), "a=3");
        assert_eq!(ex("{{ $labels.instance | toUpper }}", 1.0), "A:9100");
        assert_eq!(ex("{{ toLower \"AB\" }}", 1.0), "ab");
    }

    #[test]
    fn refusals_name_the_construct() {
        let e = Template::parse("{{ if $value }}x{{ end }}").unwrap_err();
        assert_eq!(e.to_string(), "template: unsupported action \"if\"");
        let e = Template::parse("{{ query \"up\" }}").unwrap_err();
        assert_eq!(e.to_string(), "template: unsupported function \"query\"");
        assert!(Template::parse("{{ $value").is_err());
        assert!(Template::parse("{{ $foo }}").is_err());
    }
}
