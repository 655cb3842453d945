//! Go's `math` functions where they round differently from Rust's (the C
//! library's): Prometheus computes with Go's, and users compare exact values
//! in `promtool test rules`. These follow the algorithms and coefficients of
//! Go's pure-Go implementations (from the Cephes library), which Go uses on
//! amd64 and arm64 for the functions here.
//!
//! Not covered: `exp` (and what is built on it: `sinh`, `cosh`, `tanh`,
//! `^`; `asinh` and `acosh` agree already), which Go computes in assembly on amd64 with or without FMA
//! instructions depending on the CPU, so Prometheus' own last bit depends on
//! the machine; arguments of `sin`/`cos`/`tan` beyond 2^29, where Go
//! switches to Payne–Hanek reduction, use Rust's functions.

// Coefficients are written as Go (and Cephes) write them, the code keeps
// their short names and exact comparisons so it can be checked against them.
#![allow(
    clippy::excessive_precision,
    clippy::unreadable_literal,
    clippy::float_cmp,
    clippy::many_single_char_names,
    clippy::manual_range_contains
)]

use std::f64::consts::{FRAC_PI_2, FRAC_PI_4, PI};

/// `atan` on `[0, 0.66]`: `x + x³·P(x²)/Q(x²)`.
fn xatan(x: f64) -> f64 {
    const P: [f64; 5] = [
        -8.750608600031904122785e-01,
        -1.615753718733365076637e+01,
        -7.500855792314704667340e+01,
        -1.228866684490136173410e+02,
        -6.485021904942025371773e+01,
    ];
    const Q: [f64; 5] = [
        2.485846490142306297962e+01,
        1.650270098316988542046e+02,
        4.328810604912902668951e+02,
        4.853903996359136964868e+02,
        1.945506571482613964425e+02,
    ];
    let z = x * x;
    let num = (((P[0] * z + P[1]) * z + P[2]) * z + P[3]) * z + P[4];
    let den = ((((z + Q[0]) * z + Q[1]) * z + Q[2]) * z + Q[3]) * z + Q[4];
    let z = z * num / den;
    x * z + x
}

/// `atan` of a positive argument, reduced to `[0, 0.66]`.
fn satan(x: f64) -> f64 {
    // π/2 = FRAC_PI_2 + MOREBITS.
    const MOREBITS: f64 = 6.123233995736765886130e-17;
    const TAN_3PI_8: f64 = 2.41421356237309504880;
    if x <= 0.66 {
        xatan(x)
    } else if x > TAN_3PI_8 {
        FRAC_PI_2 - xatan(1.0 / x) + MOREBITS
    } else {
        FRAC_PI_4 + xatan((x - 1.0) / (x + 1.0)) + 0.5 * MOREBITS
    }
}

/// Go's `math.Atan`.
pub(crate) fn atan(x: f64) -> f64 {
    if x == 0.0 || x.is_nan() {
        x
    } else if x > 0.0 {
        satan(x)
    } else {
        -satan(-x)
    }
}

/// Go's `math.Atan2`.
pub(crate) fn atan2(y: f64, x: f64) -> f64 {
    if y.is_nan() || x.is_nan() {
        return f64::NAN;
    }
    if y == 0.0 {
        return if x >= 0.0 && !x.is_sign_negative() {
            0.0_f64.copysign(y)
        } else {
            PI.copysign(y)
        };
    }
    if x == 0.0 {
        return FRAC_PI_2.copysign(y);
    }
    if x.is_infinite() {
        return match (x > 0.0, y.is_infinite()) {
            (true, true) => FRAC_PI_4.copysign(y),
            (true, false) => 0.0_f64.copysign(y),
            (false, true) => (3.0 * FRAC_PI_4).copysign(y),
            (false, false) => PI.copysign(y),
        };
    }
    if y.is_infinite() {
        return FRAC_PI_2.copysign(y);
    }
    let q = atan(y / x);
    if x < 0.0 {
        if q <= 0.0 {
            q + PI
        } else {
            q - PI
        }
    } else {
        q
    }
}

/// Go's `math.Asin`.
pub(crate) fn asin(x: f64) -> f64 {
    if x == 0.0 || x.is_nan() {
        return x;
    }
    let (sign, x) = if x < 0.0 { (true, -x) } else { (false, x) };
    if x > 1.0 {
        return f64::NAN;
    }
    let temp = (1.0 - x * x).sqrt();
    let r = if x > 0.7 {
        FRAC_PI_2 - satan(temp / x)
    } else {
        satan(x / temp)
    };
    if sign {
        -r
    } else {
        r
    }
}

/// Go's `math.Acos`.
pub(crate) fn acos(x: f64) -> f64 {
    FRAC_PI_2 - asin(x)
}

/// Beyond this Go reduces trigonometric arguments differently.
const REDUCE_THRESHOLD: f64 = (1_u64 << 29) as f64;
/// π/4 in three parts, for reduction in extended precision.
const PI4A: f64 = 7.85398125648498535156e-1;
const PI4B: f64 = 3.77489470793079817668e-8;
const PI4C: f64 = 2.69515142907905952645e-15;

const SIN: [f64; 6] = [
    1.58962301576546568060e-10,
    -2.50507477628578072866e-8,
    2.75573136213857245213e-6,
    -1.98412698295895385996e-4,
    8.33333333332211858878e-3,
    -1.66666666666666307295e-1,
];
const COS: [f64; 6] = [
    -1.13585365213876817300e-11,
    2.08757008419747316778e-9,
    -2.75573141792967388112e-7,
    2.48015872888517045348e-5,
    -1.38888888888730564116e-3,
    4.16666666666665929218e-2,
];

/// The octant of a positive `x` below [`REDUCE_THRESHOLD`] (odd octants
/// moved up) and `x` reduced into `[-π/4, π/4]`.
fn reduce(x: f64) -> (u64, f64) {
    // Truncation is the point: the octant's integer part.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let mut j = (x * (4.0 / PI)) as u64;
    let mut y = j as f64;
    if j & 1 == 1 {
        j += 1;
        y += 1.0;
    }
    (j, ((x - y * PI4A) - y * PI4B) - y * PI4C)
}

fn sin_poly(z: f64, zz: f64) -> f64 {
    z + z
        * zz
        * (((((SIN[0] * zz + SIN[1]) * zz + SIN[2]) * zz + SIN[3]) * zz + SIN[4]) * zz + SIN[5])
}

fn cos_poly(zz: f64) -> f64 {
    1.0 - 0.5 * zz
        + zz * zz
            * (((((COS[0] * zz + COS[1]) * zz + COS[2]) * zz + COS[3]) * zz + COS[4]) * zz + COS[5])
}

/// Go's `math.Sin`.
pub(crate) fn sin(x: f64) -> f64 {
    if x == 0.0 || x.is_nan() {
        return x;
    }
    if x.is_infinite() {
        return f64::NAN;
    }
    let (mut sign, x) = if x < 0.0 { (true, -x) } else { (false, x) };
    if x >= REDUCE_THRESHOLD {
        return if sign { -x.sin() } else { x.sin() };
    }
    let (mut j, z) = reduce(x);
    j &= 7;
    if j > 3 {
        sign = !sign;
        j -= 4;
    }
    let zz = z * z;
    let y = if j == 1 || j == 2 {
        cos_poly(zz)
    } else {
        sin_poly(z, zz)
    };
    if sign {
        -y
    } else {
        y
    }
}

/// Go's `math.Cos`.
pub(crate) fn cos(x: f64) -> f64 {
    if x.is_nan() || x.is_infinite() {
        return f64::NAN;
    }
    let x = x.abs();
    if x >= REDUCE_THRESHOLD {
        return x.cos();
    }
    let (mut j, z) = reduce(x);
    j &= 7;
    let mut sign = false;
    if j > 3 {
        j -= 4;
        sign = !sign;
    }
    if j > 1 {
        sign = !sign;
    }
    let zz = z * z;
    let y = if j == 1 || j == 2 {
        sin_poly(z, zz)
    } else {
        cos_poly(zz)
    };
    if sign {
        -y
    } else {
        y
    }
}

/// Go's `math.Tan`.
pub(crate) fn tan(x: f64) -> f64 {
    const P: [f64; 3] = [
        -1.30936939181383777646e4,
        1.15351664838587416140e6,
        -1.79565251976484877988e7,
    ];
    const Q: [f64; 4] = [
        1.36812963470692954678e4,
        -1.32089234440210967447e6,
        2.50083801823357915839e7,
        -5.38695755929454629881e7,
    ];
    if x == 0.0 || x.is_nan() {
        return x;
    }
    if x.is_infinite() {
        return f64::NAN;
    }
    let (sign, x) = if x < 0.0 { (true, -x) } else { (false, x) };
    if x >= REDUCE_THRESHOLD {
        return if sign { -x.tan() } else { x.tan() };
    }
    let (j, z) = reduce(x);
    let zz = z * z;
    let mut y = if zz > 1e-14 {
        z + z
            * (zz * ((P[0] * zz + P[1]) * zz + P[2])
                / ((((zz + Q[0]) * zz + Q[1]) * zz + Q[2]) * zz + Q[3]))
    } else {
        z
    };
    if j & 2 == 2 {
        y = -1.0 / y;
    }
    if sign {
        -y
    } else {
        y
    }
}

/// Go's `math.Log1p` (FreeBSD's `s_log1p.c`), over Go's `math.Log`.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
pub(crate) fn log1p(x: f64) -> f64 {
    const SQRT2_M1: f64 = 4.142135623730950488017e-01;
    const SQRT2_HALF_M1: f64 = -2.928932188134524755992e-01;
    const SMALL: f64 = 1.0 / (1_u64 << 29) as f64;
    const TINY: f64 = 1.0 / (1_u64 << 54) as f64;
    const TWO53: f64 = (1_u64 << 53) as f64;
    const LN2_HI: f64 = 6.93147180369123816490e-01;
    const LN2_LO: f64 = 1.90821492927058770002e-10;
    const LP: [f64; 7] = [
        6.666666666666735130e-01,
        3.999999999940941908e-01,
        2.857142874366239149e-01,
        2.222219843214978396e-01,
        1.818357216161805012e-01,
        1.531383769920937332e-01,
        1.479819860511658591e-01,
    ];
    if x < -1.0 || x.is_nan() {
        return f64::NAN;
    }
    if x == -1.0 {
        return f64::NEG_INFINITY;
    }
    if x.is_infinite() {
        return f64::INFINITY;
    }
    let absx = x.abs();
    let mut f = 0.0;
    let mut iu: u64 = 0;
    let mut k: i64 = 1;
    if absx < SQRT2_M1 {
        if absx < SMALL {
            if absx < TINY {
                return x;
            }
            return x - x * x * 0.5;
        }
        if x > SQRT2_HALF_M1 {
            k = 0;
            f = x;
            iu = 1;
        }
    }
    let mut c = 0.0;
    if k != 0 {
        let mut u;
        if absx < TWO53 {
            u = 1.0 + x;
            iu = u.to_bits();
            k = (iu >> 52) as i64 - 1023;
            c = if k > 0 { 1.0 - (u - x) } else { x - (u - 1.0) };
            c /= u;
        } else {
            u = x;
            iu = u.to_bits();
            k = (iu >> 52) as i64 - 1023;
            c = 0.0;
        }
        iu &= 0x000f_ffff_ffff_ffff;
        if iu < 0x0006_a09e_667f_3bcd {
            u = f64::from_bits(iu | 0x3ff0_0000_0000_0000);
        } else {
            k += 1;
            u = f64::from_bits(iu | 0x3fe0_0000_0000_0000);
            iu = (0x0010_0000_0000_0000 - iu) >> 2;
        }
        f = u - 1.0;
    }
    let hfsq = 0.5 * f * f;
    let kf = k as f64;
    if iu == 0 {
        if f == 0.0 {
            if k == 0 {
                return 0.0;
            }
            c += kf * LN2_LO;
            return kf * LN2_HI + c;
        }
        let r = hfsq * (1.0 - 0.666_666_666_666_666_66 * f);
        if k == 0 {
            return f - r;
        }
        return kf * LN2_HI - ((r - (kf * LN2_LO + c)) - f);
    }
    let s = f / (2.0 + f);
    let z = s * s;
    let r = z
        * (LP[0] + z * (LP[1] + z * (LP[2] + z * (LP[3] + z * (LP[4] + z * (LP[5] + z * LP[6]))))));
    if k == 0 {
        return f - (hfsq - s * (hfsq + r));
    }
    kf * LN2_HI - ((hfsq - (s * (hfsq + r) + (kf * LN2_LO + c))) - f)
}

/// Go's `math.Atanh`.
pub(crate) fn atanh(x: f64) -> f64 {
    const NEAR_ZERO: f64 = 1.0 / (1_u64 << 28) as f64;
    if x < -1.0 || x > 1.0 || x.is_nan() {
        return f64::NAN;
    }
    if x == 1.0 {
        return f64::INFINITY;
    }
    if x == -1.0 {
        return f64::NEG_INFINITY;
    }
    let (sign, x) = if x < 0.0 { (true, -x) } else { (false, x) };
    let t = if x < NEAR_ZERO {
        x
    } else if x < 0.5 {
        let t = x + x;
        0.5 * log1p(t + t * x / (1.0 - x))
    } else {
        0.5 * log1p((x + x) / (1.0 - x))
    };
    if sign {
        -t
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within an ulp or two of the C library's everywhere (exact agreement
    /// with Go is checked against a real Prometheus in
    /// `tests/promql_differential.rs`).
    #[test]
    fn close_to_the_c_library_everywhere() {
        for i in -2000..2000 {
            let x = f64::from(i) * 0.0137;
            for (ours, c) in [
                (sin(x), x.sin()),
                (cos(x), x.cos()),
                (atan(x), x.atan()),
                (atan2(x, 0.3), x.atan2(0.3)),
                (atan2(x, -0.3), x.atan2(-0.3)),
            ] {
                assert!(
                    (ours - c).abs() <= 4e-16 * c.abs().max(1e-300),
                    "{x}: {ours} {c}"
                );
            }
            let t = x / 2000.0 * 0.99;
            assert!((asin(t) - t.asin()).abs() <= 4e-16);
            assert!((acos(t) - t.acos()).abs() <= 4e-16);
            if (x / FRAC_PI_2).fract().abs() > 1e-3 {
                assert!(
                    (tan(x) - x.tan()).abs() <= 1e-15 * x.tan().abs().max(1.0),
                    "{x}"
                );
            }
        }
        assert_eq!(atan2(0.0, -1.0), PI);
        assert_eq!(atan2(f64::INFINITY, f64::NEG_INFINITY), 3.0 * FRAC_PI_4);
        assert!(sin(f64::INFINITY).is_nan());
        assert_eq!(sin(-0.0).to_bits(), (-0.0_f64).to_bits());
        assert!(asin(1.5).is_nan());
        for i in -999..1000 {
            let x = f64::from(i) / 1000.0;
            // Rust's own `atanh` loses bits for negative arguments.
            let r = (0.5 * (2.0 * x.abs() / (1.0 - x.abs())).ln_1p()).copysign(x);
            assert!(
                (atanh(x) - r).abs() <= 2e-15 * r.abs().max(1e-300),
                "{x}: {} {r}",
                atanh(x)
            );
            let y = f64::from(i) * 0.37;
            if y > -1.0 {
                assert!(
                    (log1p(y) - y.ln_1p()).abs() <= 4e-16 * y.ln_1p().abs().max(1e-300),
                    "{y}: {} {}",
                    log1p(y),
                    y.ln_1p()
                );
            }
        }
    }
}
