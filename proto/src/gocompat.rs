//! Go semantics that Prometheus' users see in text, reproduced in one place:
//! durations (`model.ParseDuration`), float formatting and parsing
//! (`strconv.FormatFloat`, `strconv.ParseFloat`), string quoting
//! (`strconv.Quote`), query escaping (`url.QueryEscape`) and RFC 3339 times
//! (`time.Time`), with the proleptic Gregorian calendar they rest on.
//!
//! Each function names the Go function it follows; where nodewatch writes
//! a fixed form Go would not (three millisecond digits), the doc says so.

use std::fmt::Write as _;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Parses a Prometheus duration (`model.ParseDuration`) into milliseconds:
/// one or more `<int><unit>` with units `y w d h m s ms` in decreasing
/// order, or `0`.
///
/// # Errors
/// The text, quoted, when it is not such a duration or overflows.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * DAY_MS),
        ("w", 7 * DAY_MS),
        ("d", DAY_MS),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ];
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err("empty duration string".into());
    }
    let bad = || format!("not a valid duration string: {s:?}");
    let mut rest = s;
    let mut total: i64 = 0;
    let mut last_unit = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(char::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        let Some(idx) = UNITS.iter().position(|(u, _)| *u == unit) else {
            return Err(bad());
        };
        if idx < last_unit {
            return Err(bad());
        }
        last_unit = idx + 1;
        total = n
            .checked_mul(UNITS[idx].1)
            .and_then(|v| v.checked_add(total))
            .ok_or_else(|| format!("duration out of range: {s:?}"))?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `NaN`, `+Inf` or `-Inf` for a value that is not finite.
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_nan() {
        Some("NaN")
    } else if v.is_infinite() {
        Some(if v > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        None
    }
}

/// `strconv.FormatFloat(v, 'f', -1, 64)`: the shortest decimal that reads
/// back as `v`, as Prometheus writes sample values and `count_values` labels.
#[must_use]
pub fn format_float(v: f64) -> String {
    non_finite(v).map_or_else(|| format!("{v}"), str::to_string)
}

/// `strconv.FormatFloat(v, 'E', -1, 64)`: `1E+00`, `1.2E+02`.
#[must_use]
pub fn format_float_e(v: f64) -> String {
    if let Some(s) = non_finite(v) {
        return s.to_string();
    }
    let s = format!("{v:E}");
    let (m, e) = s.split_once('E').unwrap_or((&s, "0"));
    let e: i32 = e.parse().unwrap_or(0);
    format!("{m}E{}{:02}", if e < 0 { '-' } else { '+' }, e.abs())
}

/// `strconv.FormatFloat(v, 'g', prec, 64)`, as `fmt`'s `%g` and `%v` print
/// a float64 (`prec = None`: the shortest that reads back as `v`).
#[must_use]
pub fn format_float_g(v: f64, prec: Option<usize>) -> String {
    if let Some(s) = non_finite(v) {
        return s.to_string();
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

/// `strconv.ParseFloat(s, 64)` for the forms Prometheus meets: `+Inf`,
/// `Inf`, `-Inf`, `NaN` (any case), decimal and exponent notation.
#[must_use]
pub fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim_start_matches('+');
    match t.to_ascii_lowercase().as_str() {
        "inf" | "infinity" => Some(if s.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }),
        "-inf" | "-infinity" => Some(f64::NEG_INFINITY),
        "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// `strconv.Quote` for the characters labels contain.
#[must_use]
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `url.QueryEscape`.
#[must_use]
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Civil date of a day count since 1970-01-01 (H. Hinnant's algorithm,
/// proleptic Gregorian like Go's `time`).
#[must_use]
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
#[must_use]
pub fn days_from_civil(y: i64, mo: i64, da: i64) -> i64 {
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYY-MM-DDThh:mm:ss` of a millisecond timestamp in UTC, and the
/// milliseconds left over.
fn rfc3339_seconds(ms: i64) -> (String, i64) {
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY_MS));
    let rem = ms.rem_euclid(DAY_MS);
    let (hour, min, sec) = (rem / 3_600_000, (rem / 60_000) % 60, (rem / 1000) % 60);
    (
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{min:02}:{sec:02}"),
        rem % 1000,
    )
}

/// RFC 3339 UTC with milliseconds, as Go's `time.Time` marshals a
/// millisecond time: no fraction when it is whole seconds, else three digits.
#[must_use]
pub fn rfc3339_ms(ms: i64) -> String {
    match rfc3339_seconds(ms) {
        (date, 0) => format!("{date}Z"),
        (date, milli) => format!("{date}.{milli:03}Z"),
    }
}

/// RFC 3339 UTC with always three millisecond digits
/// (`2023-11-14T22:13:20.000Z`), the HTTP API's `activeAt`.
#[must_use]
pub fn rfc3339_ms_fixed(ms: i64) -> String {
    let (date, milli) = rfc3339_seconds(ms);
    format!("{date}.{milli:03}Z")
}

/// Parses `2006-01-02T15:04:05.999Z07:00` (Go's `time.RFC3339Nano`) into
/// milliseconds since the epoch.
#[must_use]
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, mo, da): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (time, offset_s) = split_offset(rest)?;
    let mut parts = time.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let mi: i64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    let in_range = (0..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && (1..=31).contains(&da)
        && (0..24).contains(&h)
        && (0..60).contains(&mi)
        && (0.0..61.0).contains(&sec)
        && offset_s.abs() < 86_400
        && parts.next().is_none();
    if !in_range {
        return None;
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 - offset_s;
    Some(secs * 1000 + (sec * 1000.0).round() as i64)
}

/// Splits the time of day from its zone (`Z` or `±hh:mm`), the zone in
/// seconds east of UTC.
fn split_offset(rest: &str) -> Option<(&str, i64)> {
    if let Some(t) = rest.strip_suffix('Z') {
        return Some((t, 0));
    }
    let pos = rest.rfind(['+', '-'])?;
    let (t, off) = rest.split_at(pos);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let (h, m) = off[1..].split_once(':')?;
    let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
    if !(0..24).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    Some((t, sign * (h * 3600 + m * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5m"), Ok(300_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("100ms"), Ok(100));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 m").is_err());
        assert!(parse_duration("1m1h").is_err());
        assert!(parse_duration("-1m").is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        for days in [-800_000, -1, 0, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m.into(), d.into()), days);
        }
    }

    #[test]
    fn floats() {
        assert_eq!(format_float(1.5), "1.5");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_float_e(1.0), "1E+00");
        assert_eq!(format_float_e(120.0), "1.2E+02");
        assert_eq!(format_float_e(0.015), "1.5E-02");
        assert_eq!(format_float_g(1_000_000.0, None), "1e+06");
        assert_eq!(format_float_g(123_456.0, None), "123456");
        assert_eq!(format_float_g(1_234_567.0, None), "1.234567e+06");
        assert_eq!(format_float_g(0.0001, None), "0.0001");
        assert_eq!(format_float_g(0.00001, None), "1e-05");
        assert_eq!(format_float_g(100.0, Some(4)), "100");
        assert_eq!(format_float_g(12345.0, Some(4)), "1.234e+04");
        assert_eq!(format_float_g(1.5, Some(4)), "1.5");
        assert_eq!(format_float_g(f64::NAN, None), "NaN");
        assert_eq!(parse_float("+Inf"), Some(f64::INFINITY));
        assert_eq!(parse_float("-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert!(parse_float("NaN").is_some_and(f64::is_nan));
        assert_eq!(parse_float("x"), None);
    }

    #[test]
    fn text() {
        assert_eq!(quote("a\"b\n\u{1}"), r#""a\"b\n\x01""#);
        assert_eq!(query_escape("rate(x[5m]) > 1"), "rate%28x%5B5m%5D%29+%3E+1");
    }

    #[test]
    fn times() {
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_ms(1_700_000_000_250), "2023-11-14T22:13:20.250Z");
        assert_eq!(
            rfc3339_ms_fixed(1_700_000_000_000),
            "2023-11-14T22:13:20.000Z"
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T22:13:20.25Z"),
            Some(1_700_000_000_250)
        );
        assert_eq!(
            parse_rfc3339("2023-11-14T23:13:20+01:00"),
            Some(1_700_000_000_000)
        );
        assert_eq!(parse_rfc3339("2023-13-14T22:13:20Z"), None);
    }
}
