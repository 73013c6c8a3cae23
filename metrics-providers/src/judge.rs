//! The analysis judges: a fixed threshold range (Flagger's
//! `thresholdRange`) and a statistical canary-vs-baseline comparison
//! (Mann-Whitney U, as Kayenta does).
//!
//! Both are pure functions of their inputs.

use statrs::distribution::{ContinuousCDF, Normal};

/// The outcome of a judgement.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The check passed.
    Pass,
    /// The check failed; the reason is written for a Kubernetes Event.
    Fail(String),
    /// Too few samples so far: more may come, and the comparison is judged
    /// then. Not a pass; petrel counts it neither as a pass nor as a failed
    /// check, and never promotes while a comparison is pending.
    Pending(String),
    /// Cannot be judged whatever more comes (e.g. an invalid alpha). The
    /// caller decides how to count it; petrel's rule is that it is not a pass.
    Inconclusive(String),
}

/// Inclusive bounds a metric value must lie in (`thresholdRange`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ThresholdRange {
    /// Lowest passing value, inclusive; `None` for no lower bound.
    pub min: Option<f64>,
    /// Highest passing value, inclusive; `None` for no upper bound.
    pub max: Option<f64>,
}

impl ThresholdRange {
    /// Passes when `min <= value <= max`. NaN never passes (it is what a
    /// ratio over zero requests gives), and neither does anything compared
    /// with a NaN bound.
    pub fn check(&self, value: f64) -> Verdict {
        if value.is_nan() {
            return Verdict::Fail("value is NaN, not a number".into());
        }
        // A NaN bound fails explicitly: every comparison with NaN is false.
        if let Some(min) = self.min
            && (min.is_nan() || value < min)
        {
            return Verdict::Fail(format!("value {value} is below the minimum {min}"));
        }
        if let Some(max) = self.max
            && (max.is_nan() || value > max)
        {
            return Verdict::Fail(format!("value {value} is above the maximum {max}"));
        }
        Verdict::Pass
    }
}

/// Which change of the canary relative to the baseline is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Higher is bad (latency, error rate): one-sided test.
    Increase,
    /// Lower is bad (success rate, throughput): one-sided test.
    Decrease,
    /// Any difference is bad: two-sided test.
    Either,
}

/// Settings for [`compare`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompareConfig {
    /// What counts as a regression.
    pub direction: Direction,
    /// Significance level: the canary fails when the p-value is below it.
    pub alpha: f64,
    /// Fewer finite samples than this on either side is pending.
    pub min_samples: usize,
    /// Smallest estimated shift (in the metric's unit, in the bad direction)
    /// that may fail the canary, so a statistically significant but tiny
    /// change can pass. `0.0` fails on significance alone.
    pub min_shift: f64,
}

impl Default for CompareConfig {
    /// Higher is bad, alpha 0.05, at least 5 samples each, no minimum shift.
    fn default() -> Self {
        Self { direction: Direction::Increase, alpha: 0.05, min_samples: 5, min_shift: 0.0 }
    }
}

/// The result of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// Pass, Fail (significant change in the bad direction), Pending (too few
    /// samples yet) or Inconclusive.
    pub verdict: Verdict,
    /// p-value of the test in the configured direction, in `[0, 1]`;
    /// `None` when the test was not run.
    pub p_value: Option<f64>,
    /// Mann-Whitney U statistic of the canary sample; `None` when not run.
    pub u: Option<f64>,
    /// Hodges–Lehmann estimate of canary minus baseline (median of all
    /// pairwise differences): positive means the canary is higher. `None`
    /// when not run.
    pub shift_estimate: Option<f64>,
    /// Finite canary samples used.
    pub canary_samples: usize,
    /// Finite baseline samples used.
    pub baseline_samples: usize,
    /// Samples dropped because they were NaN or infinite (both sides).
    pub dropped: usize,
}

/// Compares `canary` against `baseline` samples with a Mann-Whitney U test
/// (normal approximation, tie- and continuity-corrected) in the direction
/// `cfg.direction` calls bad.
///
/// Non-finite samples are dropped and counted; the others are rounded to 12
/// significant digits, so values equal but for float noise tie. Fewer than
/// `cfg.min_samples` on either side is pending. When every sample on
/// both sides is the same value, nothing changed: pass with p = 1.
///
/// The shift estimate looks at every canary/baseline pair: exact up to
/// about a million pairs (a thousand samples a side), approximated from
/// evenly spaced quantiles of each side beyond that, so time and memory
/// stay bounded whatever the operator passes in.
pub fn compare(canary: &[f64], baseline: &[f64], cfg: &CompareConfig) -> Comparison {
    let finite = |xs: &[f64]| xs.iter().copied().filter(|x| x.is_finite()).map(without_float_noise).collect::<Vec<_>>();
    let (x, y) = (finite(canary), finite(baseline));
    let dropped = (canary.len() - x.len()) + (baseline.len() - y.len());
    let not_run = |verdict| Comparison {
        verdict,
        p_value: None,
        u: None,
        shift_estimate: None,
        canary_samples: x.len(),
        baseline_samples: y.len(),
        dropped,
    };

    if !(cfg.alpha > 0.0 && cfg.alpha < 1.0) {
        return not_run(Verdict::Inconclusive(format!("alpha {} must be between 0 and 1", cfg.alpha)));
    }
    let need = cfg.min_samples.max(1);
    if x.len() < need || y.len() < need {
        let dropped_note = if dropped > 0 { format!(" after dropping {dropped} NaN/Inf") } else { String::new() };
        return not_run(Verdict::Pending(format!(
            "too few samples yet: canary {}, baseline {}{dropped_note}; need at least {need} each",
            x.len(),
            y.len()
        )));
    }

    let test = mann_whitney(&x, &y, cfg.direction);
    let shift = hodges_lehmann(&x, &y);
    let bad_shift = match cfg.direction {
        Direction::Increase => shift,
        Direction::Decrease => -shift,
        Direction::Either => shift.abs(),
    };
    let verdict = if test.p_value < cfg.alpha && bad_shift >= cfg.min_shift {
        let what = match cfg.direction {
            Direction::Increase => "higher than",
            Direction::Decrease => "lower than",
            Direction::Either => "different from",
        };
        Verdict::Fail(format!(
            "canary is significantly {what} baseline (Mann-Whitney p={:.4} < {}, estimated shift {shift:+.4})",
            test.p_value, cfg.alpha
        ))
    } else {
        Verdict::Pass
    };
    Comparison {
        verdict,
        p_value: Some(test.p_value),
        u: Some(test.u),
        shift_estimate: Some(shift),
        canary_samples: x.len(),
        baseline_samples: y.len(),
        dropped,
    }
}

/// Significant digits a sample keeps before it is ranked.
const SIGNIFICANT_DIGITS: usize = 12;

/// `value` rounded to [`SIGNIFICANT_DIGITS`] significant digits.
///
/// Two queries for the same quantity rarely return the same bits: Prometheus computes
/// `19.95` for one side and `19.950000000000003` for the other from equal histograms.
/// A rank test sees every such pair as a strict order, so five "equal" values a side
/// that happen to round the same way would fail a canary at p = 0.004. Rounding away
/// the last few bits of a double makes them the ties they are. Exact decimal rounding
/// (through the scientific notation) works for every finite value, however large or
/// small.
fn without_float_noise(value: f64) -> f64 {
    let rounded: Option<f64> = format!("{value:.prec$e}", prec = SIGNIFICANT_DIGITS - 1).parse().ok();
    rounded.filter(|r| r.is_finite()).unwrap_or(value)
}

struct UTest {
    u: f64,
    p_value: f64,
}

/// Mann-Whitney U of `x` against `y`; inputs are finite and non-empty.
fn mann_whitney(x: &[f64], y: &[f64], direction: Direction) -> UTest {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let n = n1 + n2;

    // Rank the pooled sample, giving tied values their average rank.
    let mut pooled: Vec<(f64, bool)> = x.iter().map(|&v| (v, true)).chain(y.iter().map(|&v| (v, false))).collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum_x = 0.0;
    let mut tie_term = 0.0; // Σ (t³ − t) over groups of t tied values
    let mut start = 0;
    while start < pooled.len() {
        let end =
            pooled[start..].iter().position(|p| p.0 != pooled[start].0).map_or(pooled.len(), |offset| start + offset);
        let t = (end - start) as f64;
        // Ranks are 1-based: positions start..end hold ranks start+1..=end.
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let in_x = pooled[start..end].iter().filter(|p| p.1).count() as f64;
        rank_sum_x += average_rank * in_x;
        tie_term += t * t * t - t;
        start = end;
    }

    let u = rank_sum_x - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 {
        // Only when every pooled value is equal: no difference at all.
        return UTest { u, p_value: 1.0 };
    }
    let sigma = variance.sqrt();
    let normal = Normal::standard();
    // Continuity correction: move U half a step towards the mean.
    let p = match direction {
        Direction::Increase => normal.sf((u - mean - 0.5) / sigma),
        Direction::Decrease => normal.cdf((u - mean + 0.5) / sigma),
        Direction::Either => 2.0 * normal.sf(((u - mean).abs() - 0.5) / sigma),
    };
    UTest { u, p_value: p.clamp(0.0, 1.0) }
}

/// Most canary/baseline pairs [`hodges_lehmann`] will form.
const MAX_SHIFT_PAIRS: usize = 1 << 20;

/// Median of all pairwise differences `x_i − y_j`; inputs are finite and
/// non-empty. Beyond [`MAX_SHIFT_PAIRS`] pairs each side is first thinned
/// by the same factor to evenly spaced quantiles.
fn hodges_lehmann(x: &[f64], y: &[f64]) -> f64 {
    let pairs = x.len() * y.len();
    let (x, y) = if pairs > MAX_SHIFT_PAIRS {
        let factor = (MAX_SHIFT_PAIRS as f64 / pairs as f64).sqrt();
        let keep = |len: usize| ((len as f64 * factor) as usize).max(1);
        (quantiles(x, keep(x.len())), quantiles(y, keep(y.len())))
    } else {
        (x.to_vec(), y.to_vec())
    };
    let mut diffs: Vec<f64> = x.iter().flat_map(|&a| y.iter().map(move |&b| a - b)).collect();
    let len = diffs.len();
    let mid = len / 2;
    let (lower, &mut upper_mid, _) = diffs.select_nth_unstable_by(mid, f64::total_cmp);
    if len.is_multiple_of(2) {
        // `lower` holds the mid smallest values (mid ≥ 1 as len ≥ 2 here);
        // its maximum is the other middle value.
        let lower_mid = lower.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower_mid + upper_mid) / 2.0
    } else {
        upper_mid
    }
}

/// `keep` (1 ≤ keep ≤ len) evenly spaced order statistics of `values`: the
/// midpoints of `keep` equal slices of the sorted values.
fn quantiles(values: &[f64], keep: usize) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let len = sorted.len();
    // (2i + 1)·len / (2·keep) < len for i < keep: always in bounds.
    (0..keep).map(|i| sorted[(2 * i + 1) * len / (2 * keep)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg(direction: Direction) -> CompareConfig {
        CompareConfig { direction, ..CompareConfig::default() }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn threshold_bounds_are_inclusive() {
        let range = ThresholdRange { min: Some(99.0), max: Some(100.0) };
        assert_eq!(range.check(99.0), Verdict::Pass);
        assert_eq!(range.check(100.0), Verdict::Pass);
        assert_eq!(range.check(98.5), Verdict::Fail("value 98.5 is below the minimum 99".into()));
        assert_eq!(range.check(100.5), Verdict::Fail("value 100.5 is above the maximum 100".into()));
        assert!(!matches!(range.check(f64::NAN), Verdict::Pass));
        assert!(matches!(ThresholdRange::default().check(-1e300), Verdict::Pass));
        assert!(!matches!(ThresholdRange { min: Some(f64::NAN), max: None }.check(1.0), Verdict::Pass));
    }

    /// Hand check of the first case: pooled ranks 11y 12y 16x 17y 19x 20y
    /// 22x 24x 29x, so R = 3+5+7+8+9 = 32 and U = 32 − 15 = 17; mean 10,
    /// σ = √(20·10/12) = 4.0825, z = (17 − 10 − 0.5)/σ = 1.5922, one-sided
    /// p = 0.05567. All expected values agree with
    /// `scipy.stats.mannwhitneyu(method="asymptotic", use_continuity=True)`.
    #[test]
    fn matches_textbook_and_scipy_values() {
        /// canary, baseline, U, [p greater, p less, p two-sided], shift.
        type Case<'a> = (&'a [f64], &'a [f64], f64, [f64; 3], f64);
        let cases: [Case; 3] = [
            (
                &[19.0, 22.0, 16.0, 29.0, 24.0],
                &[20.0, 11.0, 17.0, 12.0],
                17.0,
                [0.055673443266570206, 0.9669037101389033, 0.11134688653314041],
                7.0,
            ),
            // With ties on both sides (tie correction matters here).
            (
                &[1.1, 2.2, 3.3, 4.4, 5.5, 6.6],
                &[1.1, 2.2, 2.2, 3.0, 3.0, 3.0, 7.0],
                26.5,
                [0.23475290389285303, 0.8072864220374605, 0.46950580778570605],
                1.1,
            ),
            (
                &[10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0],
                &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
                64.0,
                [0.00046955284955859495, 0.9996789556020677, 0.0009391056991171899],
                9.0,
            ),
        ];
        for (x, y, u, [greater, less, two_sided], shift) in cases {
            for (direction, p) in
                [(Direction::Increase, greater), (Direction::Decrease, less), (Direction::Either, two_sided)]
            {
                let c = compare(x, y, &CompareConfig { direction, min_samples: 4, ..CompareConfig::default() });
                assert_eq!(c.u, Some(u));
                let got = c.p_value.unwrap();
                assert!((got - p).abs() < 1e-7, "{direction:?}: {got} vs {p}");
                assert!(close(c.shift_estimate.unwrap(), shift));
            }
        }
    }

    #[test]
    fn constant_but_different_samples_are_judged_with_ties() {
        // scipy: U = 25, p(greater) = 0.0019883758548943256.
        let c = compare(&[5.0; 5], &[3.0; 5], &cfg(Direction::Increase));
        assert!((c.p_value.unwrap() - 0.0019883758548943256).abs() < 1e-9);
        assert!(matches!(c.verdict, Verdict::Fail(ref m) if m.contains("higher than")));
        assert_eq!(c.shift_estimate, Some(2.0));
    }

    #[test]
    fn values_equal_but_for_float_noise_are_ties() {
        // What Prometheus answered for two equal histograms in an end-to-end run.
        let canary = [19.950000000000003; 5];
        let baseline = [19.95; 5];
        for direction in [Direction::Increase, Direction::Decrease, Direction::Either] {
            let c = compare(&canary, &baseline, &cfg(direction));
            assert_eq!(c.verdict, Verdict::Pass, "{direction:?}: {c:?}");
            assert_eq!(c.p_value, Some(1.0));
        }
        // A real difference in the twelfth significant digit still counts.
        let c = compare(&[100.000000001; 5], &[100.0; 5], &cfg(Direction::Increase));
        assert!(matches!(c.verdict, Verdict::Fail(_)), "{c:?}");
        assert_eq!(without_float_noise(-1.5e-300), -1.5e-300);
        assert_eq!(without_float_noise(-1.234567890123456e-305), -1.23456789012e-305);
        assert_eq!(without_float_noise(1.234567890123456e200), 1.23456789012e200);
        assert_eq!(without_float_noise(0.0), 0.0);
        assert!(without_float_noise(f64::MAX).is_finite());
        assert_eq!(without_float_noise(0.1 + 0.2), 0.3);
    }

    #[test]
    fn identical_constant_samples_pass_with_p_one() {
        let c = compare(&[7.0; 6], &[7.0; 9], &cfg(Direction::Either));
        assert_eq!(c.verdict, Verdict::Pass);
        assert_eq!(c.p_value, Some(1.0));
        assert_eq!(c.shift_estimate, Some(0.0));
    }

    #[test]
    fn nan_is_dropped_and_counted_and_can_keep_it_pending() {
        let canary = [1.0, f64::NAN, 2.0, 3.0, f64::INFINITY, 4.0];
        let baseline = [1.0, 2.0, 3.0, 4.0, 5.0, f64::NAN];
        let c = compare(&canary, &baseline, &CompareConfig::default());
        assert_eq!(c.dropped, 3);
        assert_eq!((c.canary_samples, c.baseline_samples), (4, 5));
        assert!(matches!(
            c.verdict,
            Verdict::Pending(ref m) if m.contains("canary 4") && m.contains("dropping 3")
        ));
        assert_eq!(c.p_value, None);
    }

    #[test]
    fn too_few_samples_is_pending_not_pass() {
        let c = compare(&[1.0, 2.0], &[1.0, 2.0, 3.0, 4.0, 5.0], &CompareConfig::default());
        assert!(matches!(c.verdict, Verdict::Pending(_)));
        assert!(!matches!(c.verdict, Verdict::Pass));
        let c = compare(&[], &[], &CompareConfig { min_samples: 0, ..CompareConfig::default() });
        assert!(matches!(c.verdict, Verdict::Pending(_)));
        // A clearly worse canary is still pending below min_samples, not failed.
        let c = compare(&[900.0; 4], &[10.0; 9], &CompareConfig::default());
        assert!(matches!(c.verdict, Verdict::Pending(ref m) if m.contains("canary 4")), "{c:?}");
    }

    #[test]
    fn invalid_alpha_is_inconclusive() {
        for alpha in [0.0, 1.0, f64::NAN, -0.1] {
            let c = compare(&[1.0; 5], &[2.0; 5], &CompareConfig { alpha, ..CompareConfig::default() });
            assert!(matches!(c.verdict, Verdict::Inconclusive(ref m) if m.contains("alpha")));
        }
    }

    #[test]
    fn min_shift_lets_tiny_significant_changes_pass() {
        let base: Vec<f64> = (0..30).map(|i| 100.0 + f64::from(i % 5) * 0.01).collect();
        let canary: Vec<f64> = base.iter().map(|v| v + 0.5).collect();
        let strict = compare(&canary, &base, &CompareConfig::default());
        assert!(matches!(strict.verdict, Verdict::Fail(_)));
        let tolerant = compare(&canary, &base, &CompareConfig { min_shift: 1.0, ..CompareConfig::default() });
        assert_eq!(tolerant.verdict, Verdict::Pass);
    }

    #[test]
    fn huge_samples_stay_bounded_and_estimate_the_shift() {
        // 3000 × 3000 = 9M pairs: thinned, yet the shift is still found.
        let base: Vec<f64> = (0..3000).map(|i| f64::from((i * 7919) % 1000)).collect();
        let canary: Vec<f64> = base.iter().map(|v| v + 100.0).collect();
        let c = compare(&canary, &base, &CompareConfig::default());
        assert!((c.shift_estimate.unwrap() - 100.0).abs() < 2.0, "{c:?}");
        assert!(matches!(c.verdict, Verdict::Fail(_)));
        assert_eq!(quantiles(&[3.0, 1.0, 2.0], 1), [2.0]);
        assert_eq!(quantiles(&[4.0, 1.0, 3.0, 2.0], 2), [2.0, 4.0]);
    }

    fn samples() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(-1e3f64..1e3, 5..40)
    }

    proptest! {
        #[test]
        fn threshold_pass_iff_within_inclusive_bounds(
            v in prop::num::f64::ANY,
            min in prop::option::of(-1e6f64..1e6),
            max in prop::option::of(-1e6f64..1e6),
        ) {
            let verdict = ThresholdRange { min, max }.check(v);
            let within = !v.is_nan()
                && min.is_none_or(|m| v >= m)
                && max.is_none_or(|m| v <= m);
            prop_assert_eq!(matches!(verdict, Verdict::Pass), within);
        }

        #[test]
        fn nan_never_passes(min in prop::option::of(prop::num::f64::ANY), max in prop::option::of(prop::num::f64::ANY)) {
            let range = ThresholdRange { min, max };
            prop_assert!(!matches!(range.check(f64::NAN), Verdict::Pass));
        }

        #[test]
        fn p_value_is_a_probability(x in samples(), y in samples()) {
            for direction in [Direction::Increase, Direction::Decrease, Direction::Either] {
                let p = compare(&x, &y, &cfg(direction)).p_value.unwrap();
                prop_assert!((0.0..=1.0).contains(&p), "{p}");
            }
        }

        #[test]
        fn swapping_roles_flips_the_direction(x in samples(), y in samples()) {
            let a = compare(&x, &y, &cfg(Direction::Increase));
            let b = compare(&y, &x, &cfg(Direction::Decrease));
            prop_assert!(close(a.p_value.unwrap(), b.p_value.unwrap()));
            prop_assert!(close(a.shift_estimate.unwrap(), -b.shift_estimate.unwrap()));
            let either_ab = compare(&x, &y, &cfg(Direction::Either)).p_value.unwrap();
            let either_ba = compare(&y, &x, &cfg(Direction::Either)).p_value.unwrap();
            prop_assert!(close(either_ab, either_ba));
        }

        #[test]
        fn large_increase_fails_and_large_decrease_passes_when_increase_is_bad(
            x in samples(), y in samples(),
        ) {
            let up: Vec<f64> = x.iter().map(|v| v + 1e4).collect();
            let c = compare(&up, &y, &cfg(Direction::Increase));
            prop_assert!(matches!(c.verdict, Verdict::Fail(_)), "{:?}", c);
            prop_assert!(c.shift_estimate.unwrap() > 0.0);
            let down: Vec<f64> = x.iter().map(|v| v - 1e4).collect();
            prop_assert_eq!(compare(&down, &y, &cfg(Direction::Increase)).verdict, Verdict::Pass);
        }

        #[test]
        fn identical_samples_pass(x in samples()) {
            for direction in [Direction::Increase, Direction::Decrease, Direction::Either] {
                let c = compare(&x, &x, &cfg(direction));
                prop_assert_eq!(c.verdict, Verdict::Pass);
                prop_assert!(close(c.shift_estimate.unwrap(), 0.0));
            }
        }

        #[test]
        fn shift_estimate_is_translation_equivariant(x in samples(), y in samples(), d in -100f64..100.0) {
            let moved: Vec<f64> = x.iter().map(|v| v + d).collect();
            let before = compare(&x, &y, &cfg(Direction::Either)).shift_estimate.unwrap();
            let after = compare(&moved, &y, &cfg(Direction::Either)).shift_estimate.unwrap();
            prop_assert!((after - before - d).abs() < 1e-6);
        }
    }
}
