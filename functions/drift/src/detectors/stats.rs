//! The two distributions drift turns a significance level into a threshold with: the standard
//! normal (DDM's deviations) and the chi-squared (PSI between two windows).
//!
//! Both are computed in double precision from textbook series: the normal quantile by Acklam's
//! rational approximation (relative error below 1.2e-9), the chi-squared tail as the regularised
//! upper incomplete gamma function Q(k/2, x/2) (series below a + 1, Lentz's continued fraction
//! above, as in Numerical Recipes §6.2), and its quantile by bisection on that tail. Tail
//! probabilities down to 1e-300 are handled, far below any level drift uses.

/// The x with P(Z > x) = `p` for a standard normal Z; `p` is clamped into (1e-300, 1 - 1e-16).
pub fn normal_upper_quantile(p: f64) -> f64 {
    -normal_quantile(p.clamp(1e-300, 1.0 - 1e-16))
}

/// Acklam's inverse of the standard normal distribution function, for p in (0, 1).
fn normal_quantile(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.024_25;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p <= 1.0 - LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    }
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, nine coefficients; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum = G
        .iter()
        .enumerate()
        .skip(1)
        .fold(G[0], |sum, (i, g)| sum + g / (x + i as f64));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// The regularised upper incomplete gamma function Q(a, x) = Γ(a, x) / Γ(a), for a > 0, x ≥ 0.
fn upper_gamma(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        // Series for P(a, x); Q = 1 - P.
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..1_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-16 {
                break;
            }
        }
        (1.0 - sum * front).max(0.0)
    } else {
        // Continued fraction for Q (modified Lentz).
        const TINY: f64 = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / TINY;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..1_000 {
            let an = -(i as f64) * (i as f64 - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < TINY {
                d = TINY;
            }
            c = b + an / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            let step = d * c;
            h *= step;
            if (step - 1.0).abs() < 1e-16 {
                break;
            }
        }
        (front * h).clamp(0.0, 1.0)
    }
}

/// P(X > x) for X chi-squared with `dof` degrees of freedom (`dof` ≥ 1).
pub fn chi_squared_survival(x: f64, dof: usize) -> f64 {
    upper_gamma(dof as f64 / 2.0, x / 2.0)
}

/// The x with P(X > x) = `p` for X chi-squared with `dof` degrees of freedom (`dof` ≥ 1); `p` is
/// clamped into [1e-300, 1).
pub fn chi_squared_upper_quantile(p: f64, dof: usize) -> f64 {
    let p = p.clamp(1e-300, 1.0 - 1e-16);
    let dof = dof.max(1);
    // The tail falls from 1 at 0; double the upper end until it lies beyond p, then bisect.
    let (mut lo, mut hi) = (0.0, (dof as f64).max(1.0));
    while chi_squared_survival(hi, dof) > p {
        lo = hi;
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if chi_squared_survival(mid, dof) > p {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-12 * hi {
            break;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, relative: f64) -> bool {
        (a - b).abs() <= relative * b.abs()
    }

    #[test]
    fn normal_quantiles_match_the_tables() {
        for (p, z) in [
            (0.5, 0.0),
            (0.025, 1.959_963_984_540_054),
            (0.001_349_898_031_630_094_6, 3.0),
            (2.866_515_718_791_939e-7, 5.0),
            (1e-9, 5.997_807_015_007_686),
        ] {
            let got = normal_upper_quantile(p);
            assert!((got - z).abs() < 1e-8, "p {p}: {got} vs {z}");
        }
    }

    #[test]
    fn chi_squared_tails_match_closed_forms() {
        // Two degrees of freedom: P(X > x) = exp(-x / 2).
        for x in [0.5, 3.0, 20.0, 60.0] {
            assert!(close(chi_squared_survival(x, 2), (-x / 2.0).exp(), 1e-12));
        }
        // One degree of freedom: P(X > z²) = 2 P(Z > z).
        assert!(close(
            chi_squared_survival(9.0, 1),
            2.0 * 0.001_349_898_031_630_094_6,
            1e-9
        ));
        // Tables: χ²(9) at 0.05 and 0.001, χ²(1) at 0.05.
        assert!(close(
            chi_squared_upper_quantile(0.05, 9),
            16.918_977_6,
            1e-8
        ));
        assert!(close(
            chi_squared_upper_quantile(0.001, 9),
            27.877_164_8,
            1e-8
        ));
        assert!(close(
            chi_squared_upper_quantile(0.05, 1),
            3.841_458_82,
            1e-8
        ));
        // Far tails, where drift's levels sit: exp(-x / 2) = 1e-12 at x = 24 ln 10.
        assert!(close(
            chi_squared_upper_quantile(1e-12, 2),
            24.0 * 10f64.ln(),
            1e-9
        ));
        for (p, dof) in [(1e-8, 9), (2.5e-8, 4), (1e-10, 30)] {
            let x = chi_squared_upper_quantile(p, dof);
            assert!(close(chi_squared_survival(x, dof), p, 1e-6), "{p} {dof}");
        }
    }
}
