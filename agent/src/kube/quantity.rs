//! Kubernetes resource quantities (`250m`, `1`, `1.5`, `2k`, `128Mi`, `1e3`)
//! as floating-point numbers in the base unit (cores, bytes).
//!
//! The grammar is `resource.Quantity`'s (k8s.io/apimachinery
//! `pkg/api/resource/quantity.go`): a signed decimal number, then one
//! suffix: a binary SI one (`Ki Mi Gi Ti Pi Ei`), a decimal SI one
//! (`n u m "" k M G T P E`), or a decimal exponent (`e3`, `E-2`). The
//! `k8s-openapi` crate carries quantities as plain strings, so this is the
//! one place they become numbers. An `f64` is exact for every CPU and memory
//! figure a node has (below 2^53 bytes, millicores).

/// Longest quantity accepted: the API server canonicalises quantities to a
/// few dozen characters; anything longer is not a quantity.
const MAX_LEN: usize = 64;

/// Parses a quantity; `None` for anything that is not one.
#[must_use]
pub fn parse(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s.len() > MAX_LEN {
        return None;
    }
    // The number: optional sign, digits with at most one '.', at least one digit.
    let bytes = s.as_bytes();
    let mut end = 0;
    if matches!(bytes.first(), Some(b'+' | b'-')) {
        end = 1;
    }
    let mut digits = 0;
    let mut dot = false;
    while let Some(&b) = bytes.get(end) {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' if !dot => dot = true,
            _ => break,
        }
        end += 1;
    }
    if digits == 0 {
        return None;
    }
    let number: f64 = s[..end].parse().ok()?;
    let suffix = &s[end..];
    let binary = |p: i32| Some(number * 1024f64.powi(p));
    let v = match suffix {
        "Ki" => binary(1),
        "Mi" => binary(2),
        "Gi" => binary(3),
        "Ti" => binary(4),
        "Pi" => binary(5),
        "Ei" => binary(6),
        _ => decimal_exponent(suffix).map(|e| {
            // Dividing by an exact power of ten (not multiplying by an inexact
            // 0.001) keeps `3800m` exactly 3.8.
            if e >= 0 {
                number * 10f64.powi(e)
            } else {
                number / 10f64.powi(-e)
            }
        }),
    }?;
    v.is_finite().then_some(v)
}

/// The power of ten a decimal suffix stands for.
fn decimal_exponent(suffix: &str) -> Option<i32> {
    Some(match suffix {
        "" => 0,
        "n" => -9,
        "u" => -6,
        "m" => -3,
        "k" => 3,
        "M" => 6,
        "G" => 9,
        "T" => 12,
        "P" => 15,
        "E" => 18,
        _ => {
            // `e`/`E` then a signed integer ("E" alone is exa, above).
            let exp = suffix.strip_prefix(['e', 'E'])?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let e: i32 = exp.parse().ok()?;
            // Kubernetes bounds quantities far inside this; past it the value is nonsense.
            if !(-30..=30).contains(&e) {
                return None;
            }
            e
        }
    })
}

/// A quantity as JSON carries it: normally a string, but a hand-written
/// manifest may have a bare number (`cpu: 2`), which the API server
/// accepts and keeps as written in some clients' output.
#[must_use]
pub fn from_json(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::String(s) => parse(s),
        serde_json::Value::Number(n) => n.as_f64().filter(|x| x.is_finite()),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // tests: exact decimal values are the point
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_forms() {
        for (s, want) in [
            ("250m", 0.25),
            ("1", 1.0),
            ("1.5", 1.5),
            ("0.1", 0.1),
            (".5", 0.5),
            ("2k", 2000.0),
            ("100n", 100e-9),
            ("10u", 10e-6),
            ("128Mi", 134_217_728.0),
            ("1Gi", 1_073_741_824.0),
            ("4Ki", 4096.0),
            ("1G", 1e9),
            ("500M", 5e8),
            ("1e3", 1000.0),
            ("1E3", 1000.0),
            ("5e-3", 0.005),
            ("2E", 2e18),
            ("+3", 3.0),
            ("-1", -1.0),
            ("  2 ", 2.0),
            ("16266836Ki", 16_657_240_064.0),
        ] {
            let got = parse(s).unwrap_or_else(|| panic!("{s:?} refused"));
            assert!(
                (got - want).abs() <= want.abs() * 1e-12,
                "{s}: {got} != {want}"
            );
        }
    }

    #[test]
    fn refuses_what_is_not_a_quantity() {
        for s in [
            "", "m", "1mi", "1KB", "1.2.3", "abc", "1 m", "1e", "1e+", "1ee3", "--1", "1e999",
            "Mi", "1.5x", "0x10", "NaN", "inf",
        ] {
            assert_eq!(parse(s), None, "{s:?} accepted");
        }
        assert_eq!(parse(&"9".repeat(100)), None);
    }

    #[test]
    fn json_forms() {
        assert_eq!(from_json(&serde_json::json!("250m")), Some(0.25));
        assert_eq!(from_json(&serde_json::json!(2)), Some(2.0));
        assert_eq!(from_json(&serde_json::json!(null)), None);
        assert_eq!(from_json(&serde_json::json!([1])), None);
    }
}
