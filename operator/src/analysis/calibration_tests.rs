//! Calibration of the comparison judge ([`judge_comparison`], exactly as a Canary's
//! `comparison` runs it) on synthetic values from known distributions, with a seeded
//! generator so every run draws the same values. It prints what it measured.
//!
//! The model: each analysis tick contributes one value per side, such as that tick's
//! P99 latency. Those per-tick values are log-normal (latency is positive and
//! right-skewed): median 100 ms and σ = 0.5 for the log, so 90% of the ticks fall
//! between 44 ms and 228 ms. A canary "1.5x slower" has every value multiplied by 1.5.
//!
//! The false-positive rate is measured twice: exactly, over every value the test
//! statistic can take (the judge's rate is just under alpha, 4.94% at 50 values a side,
//! too close for a simulation alone to tell apart from 5%), and by simulation, which must
//! agree with it.
//!
//! `cargo test -p petrel --lib calibration -- --nocapture` shows the figures.

use rand::SeedableRng;
use rand::distr::Distribution;
use rand::rngs::StdRng;
use statrs::distribution::LogNormal;

use super::metrics::judge_comparison;
use crate::api::canary::{ComparisonDirection, ComparisonSamples, MetricComparison, MetricOutcome};

const SEED: u64 = 20_261_122;
const MEDIAN_MS: f64 = 100.0;
const SIGMA: f64 = 0.5;
const ALPHA: f64 = 0.05;

/// Per-tick values of a version whose latency is `scale` times the baseline's.
fn latency(scale: f64, sigma: f64) -> LogNormal {
    // The log-normal's parameters are finite and σ > 0: it always exists.
    LogNormal::new((MEDIAN_MS * scale).ln(), sigma).expect("valid log-normal parameters")
}

/// Runs `trials` comparisons of `n` canary values (latency `scale` × the primary's)
/// against `n` primary values; returns how many failed the canary.
fn failures(
    rng: &mut StdRng,
    trials: usize,
    n: usize,
    scale: f64,
    sigma: f64,
    direction: ComparisonDirection,
) -> usize {
    let cfg = MetricComparison {
        direction,
        min_samples: Some(i32::try_from(n).expect("small n")),
        alpha: Some(ALPHA),
        ..Default::default()
    };
    let (canary, primary) = (latency(scale, sigma), latency(1.0, sigma));
    (0..trials)
        .filter(|_| {
            let samples = ComparisonSamples {
                name: "request-duration".into(),
                canary: (0..n).map(|_| canary.sample(rng)).collect(),
                primary: (0..n).map(|_| primary.sample(rng)).collect(),
            };
            let (outcome, message) = judge_comparison(&samples, &cfg);
            assert_ne!(outcome, MetricOutcome::Pending, "{n} values a side reach minSamples {n}: {message}");
            outcome == MetricOutcome::Failed
        })
        .count()
}

/// A rate with its 95% Wilson interval, for the printout.
fn rate(hits: usize, trials: usize) -> String {
    let (p, n, z) = (hits as f64 / trials as f64, trials as f64, 1.96);
    let centre = (p + z * z / (2.0 * n)) / (1.0 + z * z / n);
    let half = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt() / (1.0 + z * z / n);
    format!(
        "{:5.2}% ({hits}/{trials}, 95% CI {:.2}–{:.2}%)",
        100.0 * p,
        100.0 * (centre - half),
        100.0 * (centre + half)
    )
}

/// The exact false-positive rate of the judge for `n` values a side from one continuous
/// distribution (no ties), found by running the judge itself once per value of the
/// Mann-Whitney statistic U and weighting its verdict with the exact probability of
/// that U when both sides come from one distribution.
///
/// Without ties the judge's verdict depends on the values only through their ranks, and
/// on the ranks only through U (the canary's count of pairs above the primary), so one
/// arrangement per U stands for all of them.
fn exact_false_positive_rate(n: usize, direction: ComparisonDirection) -> f64 {
    let cfg = MetricComparison {
        direction,
        min_samples: Some(i32::try_from(n).expect("small n")),
        alpha: Some(ALPHA),
        ..Default::default()
    };
    let null = null_distribution_of_u(n);
    let primary: Vec<f64> = (0..n).map(|j| 2.0 * j as f64).collect();
    (0..=n * n)
        .filter(|&u| {
            // Canary value i sits just below the even primary value 2·above, so above
            // `above` primary values, the counts summing to u; the small offset keeps
            // the canary values distinct (continuous values never tie).
            let canary: Vec<f64> =
                (0..n).map(|i| 2.0 * u.saturating_sub(i * n).min(n) as f64 - 1.0 + i as f64 / (2 * n) as f64).collect();
            let samples = ComparisonSamples { name: "exact".into(), canary, primary: primary.clone() };
            judge_comparison(&samples, &cfg).0 == MetricOutcome::Failed
        })
        .map(|u| null[u])
        .sum()
}

/// P(U = u), u = 0..=n², for n values a side from one continuous distribution: every
/// interleaving of the two sides is equally likely, and counting them by the largest
/// value (`m` canary and `k` primary values left) gives
/// P(m, k, u) = m/(m+k)·P(m-1, k, u-k) + k/(m+k)·P(m, k-1, u).
fn null_distribution_of_u(n: usize) -> Vec<f64> {
    // table[k][u] for the current m; with no canary value left, U = 0.
    let mut table: Vec<Vec<f64>> = (0..=n).map(|_| vec![1.0]).collect();
    for m in 1..=n {
        let mut next: Vec<Vec<f64>> = vec![vec![1.0]];
        for k in 1..=n {
            let mut row = vec![0.0; m * k + 1];
            let total = (m + k) as f64;
            for (u, p) in table[k].iter().enumerate() {
                row[u + k] += m as f64 / total * p;
            }
            for (u, p) in next[k - 1].iter().enumerate() {
                row[u] += k as f64 / total * p;
            }
            next.push(row);
        }
        table = next;
    }
    table.swap_remove(n)
}

#[test]
fn false_positive_rate_is_at_most_alpha_when_canary_and_primary_are_alike() {
    const TRIALS: usize = 4_000;
    let mut rng = StdRng::seed_from_u64(SEED);
    println!("calibration: canary and primary from one log-normal (median {MEDIAN_MS} ms, σ {SIGMA}), alpha {ALPHA}");
    for (n, direction) in [
        (5, ComparisonDirection::Increase),
        (10, ComparisonDirection::Increase),
        (20, ComparisonDirection::Increase),
        (50, ComparisonDirection::Increase),
        (50, ComparisonDirection::Either),
    ] {
        let exact = exact_false_positive_rate(n, direction);
        let failed = failures(&mut rng, TRIALS, n, 1.0, SIGMA, direction);
        println!(
            "  false positives, {n:2} values a side, {direction:?}: exact {:.3}%, measured {}",
            100.0 * exact,
            rate(failed, TRIALS)
        );
        assert!(exact <= ALPHA, "{n} a side, {direction:?}: exact false-positive rate {exact} above alpha");
        // The simulation runs the judge on drawn values end to end; it must agree with the
        // exact figure within sampling noise (4 standard errors).
        let measured = failed as f64 / TRIALS as f64;
        let noise = 4.0 * (exact * (1.0 - exact) / TRIALS as f64).sqrt();
        assert!(
            (measured - exact).abs() <= noise,
            "{n} a side, {direction:?}: measured {} disagrees with the exact {exact}",
            rate(failed, TRIALS)
        );
    }
}

#[test]
fn the_exact_null_distribution_matches_hand_counts() {
    // n = 2: the six interleavings give U = 0, 1, 2, 2, 3, 4.
    let p = null_distribution_of_u(2);
    let sixth = 1.0 / 6.0;
    for (got, want) in p.iter().zip([sixth, sixth, 2.0 * sixth, sixth, sixth]) {
        assert!((got - want).abs() < 1e-12, "{p:?}");
    }
    // n = 5: P(U ≥ 21) = 12/252, the one-sided rejection region of the judge at 0.05
    // (normal approximation with continuity correction: U ≥ 21).
    let tail: f64 = null_distribution_of_u(5)[21..].iter().sum();
    assert!((tail - 12.0 / 252.0).abs() < 1e-12, "{tail}");
    assert!((exact_false_positive_rate(5, ComparisonDirection::Increase) - 12.0 / 252.0).abs() < 1e-12);
    for n in [3, 10, 50] {
        let total: f64 = null_distribution_of_u(n).iter().sum();
        assert!((total - 1.0).abs() < 1e-9, "n={n}: {total}");
    }
}

#[test]
fn a_canary_one_and_a_half_times_slower_is_detected_with_fifty_values_a_side() {
    const TRIALS: usize = 2_000;
    let mut rng = StdRng::seed_from_u64(SEED + 1);
    let detected = failures(&mut rng, TRIALS, 50, 1.5, SIGMA, ComparisonDirection::Increase);
    println!(
        "calibration: canary latency 1.5x the primary's (log-normal, median {MEDIAN_MS} ms, σ {SIGMA}), 50 values a side, alpha {ALPHA}: detected {}",
        rate(detected, TRIALS)
    );
    assert!(detected as f64 / TRIALS as f64 >= 0.95, "detection {} below 95%", rate(detected, TRIALS));

    // Where the judge's power runs out, for the docs (printed, not asserted): fewer
    // values, or noisier ticks.
    const SWEEP_TRIALS: usize = 500;
    for sigma in [0.25, 0.5, 1.0] {
        let row: Vec<String> = [5, 10, 20, 50]
            .into_iter()
            .map(|n| {
                let hits = failures(&mut rng, SWEEP_TRIALS, n, 1.5, sigma, ComparisonDirection::Increase);
                format!("n={n}: {:5.1}%", 100.0 * hits as f64 / SWEEP_TRIALS as f64)
            })
            .collect();
        println!("  detection of 1.5x at σ {sigma}: {} ({SWEEP_TRIALS} trials each)", row.join(", "));
    }
}
