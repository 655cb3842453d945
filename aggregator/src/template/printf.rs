//! `printf`: directives are split here and each is formatted by gotmpl's
//! printf, except where floats need Go's own output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use gotmpl::Value;
use nodewatch_proto::gocompat::format_float_g;

use super::value::{go_fmt, go_type, string, want_str};

/// Largest `printf` width or precision honoured: more is never useful in
/// an alert and would let one template allocate without bound.
const MAX_PRINTF_WIDTH: usize = 1024;

pub(super) fn printf(a: &[Value]) -> Result<Value, String> {
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
            let _ = write!(out, "%!{}(float64={})", d.verb, format_float_g(*f, None));
        }
        // Containers may hold floats: print them Go's way, then pad.
        Value::List(_) | Value::Map(_) if d.verb == 'v' => {
            out.push_str(&gotmpl_printf(&d.text('s'), Some(&string(go_fmt(arg)))));
        }
        _ => out.push_str(&gotmpl_printf(&d.text(d.verb), Some(arg))),
    }
}
