//! Which deployment strategy a Canary's analysis describes, and its traffic steps.
//!
//! A run is a sequence of *steps* from `(weight 0, iterations 0)` to promotion. Each
//! passing analysis tick takes one step ([`Strategy::next_step`]); the number of steps is
//! also the number of passing metric ticks a release needs before it can be promoted
//! ([`Strategy::steps_to_promotion`]), because the first tick only runs pre-rollout hooks.

use std::time::Duration;

use crate::provider::Provider;
use petrel_api::canary::{CanaryAnalysis, CanaryMetric, CanarySpec};

/// Analysis interval when `analysis.interval` is unset (Flagger: 1m).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// Failed checks before rollback when `analysis.threshold` is unset.
pub const DEFAULT_THRESHOLD: u32 = 1;
/// Canary weight at which promotion starts when `analysis.maxWeight` is unset.
pub const DEFAULT_MAX_WEIGHT: u8 = 100;
/// Seconds a canary may stay stuck when `progressDeadlineSeconds` is unset.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: u32 = 600;
/// Blue/green iterations the `kubernetes` provider uses when `analysis.iterations` is unset.
pub const DEFAULT_KUBERNETES_ITERATIONS: u32 = 10;

/// How traffic moves during one release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Weighted canary: the canary receives `weights[0]`, then `weights[1]`… of the traffic,
    /// one step per passing tick; promotion after a passing tick at the last weight.
    Canary {
        /// Canary weights in increasing order, each in 1..=100. Empty when maxWeight is 0.
        weights: Vec<u8>,
        /// One mirror-only step (all responses from the primary) before the first weight.
        mirror_first: bool,
    },
    /// A/B testing: requests matching `analysis.match` go to the canary for `iterations` ticks.
    AbTesting { iterations: u32 },
    /// Blue/green: `iterations` ticks with the canary receiving no user traffic (or a mirror
    /// of it), then all traffic on the canary for one tick, then promotion.
    BlueGreen { iterations: u32, mirror: bool },
}

/// Route weights written to the router. `primary + canary == 100` by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routes {
    pub primary: u8,
    pub canary: u8,
    pub mirror: bool,
}

impl Routes {
    /// Canary gets `canary` percent (clamped to 100), the primary the rest.
    pub fn canary_weight(canary: u8, mirror: bool) -> Self {
        let canary = canary.min(100);
        Routes { primary: 100 - canary, canary, mirror }
    }

    pub const ALL_PRIMARY: Routes = Routes { primary: 100, canary: 0, mirror: false };
    pub const ALL_CANARY: Routes = Routes { primary: 0, canary: 100, mirror: false };
}

/// What a passing step does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// Canary strategy: mirror traffic before any weight is shifted.
    Mirror,
    /// Canary strategy: shift weight to the canary.
    Weight,
    /// A/B or blue/green: one more passing iteration.
    Iteration,
    /// Blue/green: all traffic to the canary for the final tick.
    SwitchToCanary,
}

impl StepKind {
    /// Whether the step sends more traffic to the canary, so confirm-traffic-increase gates it.
    pub fn increases_traffic(self) -> bool {
        matches!(self, StepKind::Mirror | StepKind::Weight | StepKind::SwitchToCanary)
    }
}

/// The outcome of a passing tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Move to the given routes and status counters.
    Advance { kind: StepKind, routes: Routes, weight: u8, iterations: u32 },
    /// Every step passed: promote.
    Promote,
}

impl NextStep {
    /// Whether this step waits until every comparison of the run is judged: promotion,
    /// and a step that leaves the primary without user traffic (blue/green's switch, a
    /// canary weight of 100), after which no primary value can be collected and the
    /// unjudged canary would serve everyone. The steps before it are the run's steps
    /// "up to the last one" for a comparison; a pending comparison does not hold them.
    pub fn needs_judged_comparisons(self) -> bool {
        match self {
            NextStep::Promote => true,
            NextStep::Advance { kind: StepKind::SwitchToCanary, .. } => true,
            NextStep::Advance { kind: StepKind::Weight, routes, .. } => routes.primary == 0,
            NextStep::Advance { kind: StepKind::Mirror | StepKind::Iteration, .. } => false,
        }
    }
}

/// The strategy a Canary's spec describes for a provider (Flagger's `DeploymentStrategy`).
///
/// `match` + iterations ⇒ A/B; iterations alone ⇒ blue/green; otherwise weighted canary.
/// The `kubernetes` provider cannot split traffic, so it is always blue/green without
/// mirroring, with 10 iterations when none are set.
pub fn strategy_of(spec: &CanarySpec, provider: Provider) -> Strategy {
    let default_analysis = CanaryAnalysis::default();
    let analysis = spec.analysis.as_ref().unwrap_or(&default_analysis);
    let iterations = analysis.iterations.filter(|n| *n > 0).map(|n| n as u32);
    let has_match = analysis.match_.as_ref().is_some_and(|m| !m.is_empty());
    let mirror = analysis.mirror && provider.supports_mirroring();

    if provider == Provider::Kubernetes {
        return Strategy::BlueGreen { iterations: iterations.unwrap_or(DEFAULT_KUBERNETES_ITERATIONS), mirror: false };
    }
    match iterations {
        Some(iterations) if has_match => Strategy::AbTesting { iterations },
        Some(iterations) => Strategy::BlueGreen { iterations, mirror },
        None => Strategy::Canary { weights: canary_weights(analysis), mirror_first: mirror },
    }
}

/// The canary weights of a weighted run.
///
/// `stepWeights` wins when it has a positive entry; entries that do not increase are
/// dropped (a weight step never goes down). Otherwise `stepWeight` up to `maxWeight`
/// (default 100), the last step clamped to `maxWeight`. A missing or zero `stepWeight`
/// means one step straight to `maxWeight` (Flagger would never move; petrel does not
/// leave a release stuck at 0%).
pub fn canary_weights(analysis: &CanaryAnalysis) -> Vec<u8> {
    let explicit: Vec<u8> =
        analysis.step_weights.iter().flatten().map(|w| clamp_percent(*w)).fold(Vec::new(), |mut kept, w| {
            if w > kept.last().copied().unwrap_or(0) {
                kept.push(w);
            }
            kept
        });
    if !explicit.is_empty() {
        return explicit;
    }
    let max = analysis.max_weight.map(clamp_percent).unwrap_or(DEFAULT_MAX_WEIGHT);
    if max == 0 {
        return Vec::new();
    }
    let step = analysis.step_weight.map(clamp_percent).filter(|s| *s > 0).unwrap_or(max);
    let mut weights = Vec::new();
    let mut weight = 0u8;
    while weight < max {
        weight = weight.saturating_add(step).min(max);
        weights.push(weight);
    }
    weights
}

fn clamp_percent(value: i32) -> u8 {
    // The clamp makes the narrowing cast lossless.
    value.clamp(0, 100) as u8
}

impl Strategy {
    /// The step a passing tick takes from the current weight and iterations.
    pub fn next_step(&self, weight: u8, iterations: u32) -> NextStep {
        match self {
            Strategy::Canary { weights, mirror_first } => {
                // The mirror-only step comes first even when there is no weight to add
                // (maxWeight 0): it is part of the analysis the spec declared.
                if *mirror_first && weight == 0 && iterations == 0 {
                    NextStep::Advance {
                        kind: StepKind::Mirror,
                        routes: Routes { primary: 100, canary: 0, mirror: true },
                        weight: 0,
                        iterations: 1,
                    }
                } else if weight >= self.max_weight() {
                    NextStep::Promote
                } else {
                    // `weight < max_weight` and the last entry is the max, so one exists.
                    let next = weights.iter().copied().find(|w| *w > weight).unwrap_or(100);
                    NextStep::Advance {
                        kind: StepKind::Weight,
                        routes: Routes::canary_weight(next, false),
                        weight: next,
                        iterations,
                    }
                }
            }
            Strategy::AbTesting { iterations: needed } => {
                if iterations < *needed {
                    NextStep::Advance {
                        kind: StepKind::Iteration,
                        // The router sends matching requests to the canary, the rest to the primary.
                        routes: Routes::ALL_CANARY,
                        weight: 100,
                        iterations: iterations + 1,
                    }
                } else {
                    NextStep::Promote
                }
            }
            Strategy::BlueGreen { iterations: needed, mirror } => {
                if iterations < *needed {
                    NextStep::Advance {
                        kind: StepKind::Iteration,
                        routes: Routes { primary: 100, canary: 0, mirror: *mirror },
                        weight: 0,
                        iterations: iterations + 1,
                    }
                } else if weight < 100 {
                    NextStep::Advance {
                        kind: StepKind::SwitchToCanary,
                        routes: Routes::ALL_CANARY,
                        weight: 100,
                        iterations,
                    }
                } else {
                    NextStep::Promote
                }
            }
        }
    }

    /// Canary weight at which the analysis is complete.
    pub fn max_weight(&self) -> u8 {
        match self {
            Strategy::Canary { weights, .. } => weights.last().copied().unwrap_or(0),
            Strategy::AbTesting { .. } | Strategy::BlueGreen { .. } => 100,
        }
    }

    /// Number of steps (= passing metric ticks) between the start of a run and promotion.
    pub fn steps_to_promotion(&self) -> u32 {
        match self {
            Strategy::Canary { weights, mirror_first } => weights.len() as u32 + u32::from(*mirror_first),
            Strategy::AbTesting { iterations } => *iterations,
            Strategy::BlueGreen { iterations, .. } => iterations + 1,
        }
    }

    /// Analysis ticks with metrics a run has before the first step that waits for every
    /// comparison to be judged ([`NextStep::needs_judged_comparisons`]): the values a
    /// comparison can collect per side, at most, when no tick fails.
    ///
    /// The first tick of a run only runs pre-rollout hooks, then every step is followed
    /// by a tick with metrics: one per canary weight below 100 (and the mirror step),
    /// one per A/B or blue/green iteration.
    pub fn comparison_ticks(&self) -> u32 {
        match self {
            Strategy::Canary { weights, mirror_first } => {
                weights.iter().filter(|w| **w < 100).count() as u32 + u32::from(*mirror_first)
            }
            Strategy::AbTesting { iterations } | Strategy::BlueGreen { iterations, .. } => *iterations,
        }
    }

    /// Whether promotion may move traffic back to the primary in `stepWeightPromotion`
    /// steps: only a weighted canary has a weight to walk down; A/B and blue/green switch
    /// back at once.
    pub fn steps_promotion(&self) -> bool {
        matches!(self, Strategy::Canary { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Canary { .. } => "canary",
            Strategy::AbTesting { .. } => "A/B testing",
            Strategy::BlueGreen { .. } => "blue/green",
        }
    }
}

/// Why a Canary's steps can never collect the values one of its comparisons needs, or
/// `None` when they can (or when `skipAnalysis` runs no analysis at all). The reconciler
/// reports it as a Stalled condition and touches no traffic, rather than hold every
/// release at its last step until the deadline.
pub fn comparison_shortfall(spec: &CanarySpec, provider: Provider) -> Option<String> {
    if spec.skip_analysis {
        return None;
    }
    let strategy = strategy_of(spec, provider);
    let ticks = strategy.comparison_ticks();
    let short: Vec<String> = spec
        .analysis
        .iter()
        .flat_map(|analysis| &analysis.metrics)
        .filter_map(|metric| {
            let needed = metric.comparison.as_ref()?.min_samples();
            (u64::from(ticks) < needed as u64).then(|| format!("metric {} needs minSamples {needed}", metric.name))
        })
        .collect();
    if short.is_empty() {
        return None;
    }
    let steps = match &strategy {
        Strategy::Canary { weights, mirror_first } => {
            format!("canary weights {weights:?}{}", if *mirror_first { " after a mirror step" } else { "" })
        }
        Strategy::AbTesting { iterations } => format!("{iterations} A/B iterations"),
        Strategy::BlueGreen { iterations, .. } => format!("{iterations} blue/green iterations"),
    };
    Some(format!(
        "the analysis has {ticks} tick(s) with metrics before promotion ({steps}; a weight of 100 counts as promotion), \
         so a comparison collects at most {ticks} value(s) a side: {}; add steps (stepWeight/maxWeight, stepWeights, \
         iterations) or lower comparison.minSamples",
        short.join(", ")
    ))
}

/// Canary weight after one promotion tick that moves `step` percent back to the primary;
/// `None` step (stepWeightPromotion unset or 0) moves everything at once.
pub fn weight_after_promotion_step(canary_weight: u8, step: Option<u8>) -> u8 {
    match step {
        Some(step) if step > 0 => canary_weight.saturating_sub(step),
        _ => 0,
    }
}

/// `analysis.stepWeightPromotion`, when set to a positive percentage.
pub fn promotion_step(spec: &CanarySpec) -> Option<u8> {
    spec.analysis.as_ref().and_then(|a| a.step_weight_promotion).map(clamp_percent).filter(|s| *s > 0)
}

/// Failed checks tolerated before rollback.
pub fn threshold_of(spec: &CanarySpec) -> u32 {
    spec.analysis.as_ref().and_then(|a| a.threshold).filter(|t| *t > 0).map(|t| t as u32).unwrap_or(DEFAULT_THRESHOLD)
}

/// Time between analysis ticks. The API server validates the format (pattern and CEL
/// `duration()`), so a value that still fails to parse here means validation was
/// bypassed; the reconciler reports it as Stalled through [`interval_of`], and the state
/// machine keeps the documented default rather than spinning.
pub fn analysis_interval(spec: &CanarySpec) -> Duration {
    interval_of(spec).unwrap_or(DEFAULT_INTERVAL)
}

/// The range window of `metric`'s queries (`{{ interval }}`) as written: the metric's
/// own `interval`, else the analysis interval; `None` when neither is set (the default).
pub fn metric_interval_text<'a>(spec: &'a CanarySpec, metric: &'a CanaryMetric) -> Option<&'a str> {
    metric.interval.as_deref().or_else(|| spec.analysis.as_ref().and_then(|a| a.interval.as_deref()))
}

/// The longest range window of the analysis's metrics (zero without metrics): how far
/// back the queries of one check reach. An interval that does not parse (validation
/// bypassed) counts as the default, as [`analysis_interval`] does.
pub fn longest_metric_window(spec: &CanarySpec) -> Duration {
    spec.analysis
        .iter()
        .flat_map(|a| &a.metrics)
        .map(|metric| {
            metric_interval_text(spec, metric).and_then(|text| parse_duration(text).ok()).unwrap_or(DEFAULT_INTERVAL)
        })
        .max()
        .unwrap_or(Duration::ZERO)
}

/// `analysis.interval` parsed, or the default when unset.
pub fn interval_of(spec: &CanarySpec) -> Result<Duration, DurationError> {
    match spec.analysis.as_ref().and_then(|a| a.interval.as_deref()) {
        Some(text) => parse_duration(text),
        None => Ok(DEFAULT_INTERVAL),
    }
}

/// `progressDeadlineSeconds`, default 600.
pub fn progress_deadline(spec: &CanarySpec) -> Duration {
    let seconds = spec
        .progress_deadline_seconds
        .filter(|s| *s > 0)
        .map(|s| s as u32)
        .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS);
    Duration::from_secs(u64::from(seconds))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {text:?}: {why} (expected Go-style durations such as 30s, 1m, 1m30s, 500ms, 1.5h)")]
pub struct DurationError {
    pub text: String,
    pub why: &'static str,
}

/// Parses a Go `time.ParseDuration` string without sign: one or more `<number><unit>`
/// with units ns, us (µs), ms, s, m, h and optional fractions (`1.5h`). `0` alone is zero.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let error = |why| DurationError { text: text.to_string(), why };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(error("empty"));
    }
    let mut rest = text;
    let mut total_nanos: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        if number.is_empty() {
            return Err(error("a number must come before each unit"));
        }
        let value: f64 = number.parse().map_err(|_| error("malformed number"))?;
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos_per_unit = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(error("missing unit")),
            _ => return Err(error("unknown unit")),
        };
        total_nanos += value * nanos_per_unit;
        rest = next;
    }
    // Go rejects durations beyond ~290 years; so do we, rather than saturating silently.
    // `i64::MAX as f64` rounds up to 2^63, itself out of range: hence `>=` (found by the
    // fuzz seed fuzz/seeds/duration/go-max).
    if !total_nanos.is_finite() || total_nanos >= i64::MAX as f64 {
        return Err(error("too large"));
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_api::canary::HttpMatch;

    fn spec_with(analysis: CanaryAnalysis) -> CanarySpec {
        CanarySpec { analysis: Some(analysis), ..Default::default() }
    }

    fn walk(strategy: &Strategy) -> Vec<NextStep> {
        let (mut weight, mut iterations) = (0u8, 0u32);
        let mut steps = Vec::new();
        loop {
            let step = strategy.next_step(weight, iterations);
            steps.push(step);
            match step {
                NextStep::Advance { weight: w, iterations: i, .. } => (weight, iterations) = (w, i),
                NextStep::Promote => return steps,
            }
            assert!(steps.len() < 500, "strategy {strategy:?} never reaches promotion");
        }
    }

    fn weights_walked(strategy: &Strategy) -> Vec<u8> {
        walk(strategy)
            .iter()
            .filter_map(|s| match s {
                NextStep::Advance { routes, .. } => Some(routes.canary),
                NextStep::Promote => None,
            })
            .collect()
    }

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2h45m"), Ok(Duration::from_secs(9900)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
    }

    /// Why petrel keeps its own parser rather than `kube_core::Duration` (issue 16 asked
    /// for the crate): kube-core 5's parser panics on a tenant's overlong duration
    /// (`Duration::mul_f64` overflows), accepts a sign and reads no upper bound. Should
    /// this start failing, kube's parser has become safe for tenant input: switch to it.
    #[test]
    fn kube_core_durations_panic_on_overflow_so_petrel_parses_its_own() {
        let overlong = "99999999999999999999h";
        let kube = std::panic::catch_unwind(|| overlong.parse::<kube_core::Duration>().is_ok());
        assert!(kube.is_err(), "kube_core::Duration no longer panics on {overlong}");
        assert_eq!(parse_duration(overlong).unwrap_err().why, "too large");
        assert!("-1s".parse::<kube_core::Duration>().is_ok_and(|d| d.is_negative()));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn malformed_durations_are_errors() {
        for bad in ["", "10", "s", "1x", "-1s", "1m30", "1..5s", "ms5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert_eq!(parse_duration("1d").unwrap_err().why, "unknown unit");
        assert_eq!(parse_duration("2562048h").unwrap_err().why, "too large");
        assert_eq!(parse_duration("9223372036854775807ns").unwrap_err().why, "too large");
        assert_eq!(parse_duration("2562047h").map(|d| d.as_secs()), Ok(2562047 * 3600));
    }

    #[test]
    fn defaults_follow_flagger() {
        let spec = CanarySpec::default();
        assert_eq!(analysis_interval(&spec), Duration::from_secs(60));
        assert_eq!(threshold_of(&spec), 1);
        assert_eq!(progress_deadline(&spec), Duration::from_secs(600));
        assert_eq!(strategy_of(&spec, Provider::Istio), Strategy::Canary { weights: vec![100], mirror_first: false });
    }

    #[test]
    fn step_weight_walks_up_to_max_weight_and_clamps_the_last_step() {
        let spec = spec_with(CanaryAnalysis { step_weight: Some(20), max_weight: Some(50), ..Default::default() });
        let strategy = strategy_of(&spec, Provider::GatewayApi);
        assert_eq!(strategy, Strategy::Canary { weights: vec![20, 40, 50], mirror_first: false });
        assert_eq!(weights_walked(&strategy), vec![20, 40, 50]);
        assert_eq!(strategy.steps_to_promotion(), 3);
        assert_eq!(strategy.max_weight(), 50);
    }

    #[test]
    fn step_weights_win_and_never_go_down() {
        let spec = spec_with(CanaryAnalysis {
            step_weight: Some(10),
            step_weights: Some(vec![1, 5, 5, 3, 20, 80]),
            ..Default::default()
        });
        let strategy = strategy_of(&spec, Provider::Istio);
        assert_eq!(weights_walked(&strategy), vec![1, 5, 20, 80]);
        assert_eq!(strategy.max_weight(), 80);
    }

    #[test]
    fn mirror_adds_one_mirror_step_only_where_the_provider_mirrors() {
        let analysis = CanaryAnalysis { step_weight: Some(50), mirror: true, ..Default::default() };
        let istio = strategy_of(&spec_with(analysis.clone()), Provider::Istio);
        let steps = walk(&istio);
        assert!(matches!(
            steps[0],
            NextStep::Advance { kind: StepKind::Mirror, routes: Routes { primary: 100, canary: 0, mirror: true }, .. }
        ));
        assert_eq!(weights_walked(&istio), vec![0, 50, 100]);
        assert_eq!(istio.steps_to_promotion(), 3);

        let nginx = strategy_of(&spec_with(analysis), Provider::Nginx);
        assert_eq!(weights_walked(&nginx), vec![50, 100]);
    }

    #[test]
    fn match_with_iterations_is_ab_testing() {
        let spec = spec_with(CanaryAnalysis {
            iterations: Some(3),
            match_: Some(vec![HttpMatch::default()]),
            ..Default::default()
        });
        let strategy = strategy_of(&spec, Provider::Istio);
        assert_eq!(strategy, Strategy::AbTesting { iterations: 3 });
        assert_eq!(weights_walked(&strategy), vec![100, 100, 100]);
        assert_eq!(strategy.steps_to_promotion(), 3);
    }

    #[test]
    fn iterations_alone_is_blue_green_ending_with_all_traffic_on_the_canary() {
        let spec = spec_with(CanaryAnalysis { iterations: Some(2), mirror: true, ..Default::default() });
        let strategy = strategy_of(&spec, Provider::GatewayApi);
        assert_eq!(strategy, Strategy::BlueGreen { iterations: 2, mirror: true });
        let steps = walk(&strategy);
        let kinds: Vec<_> = steps
            .iter()
            .map(|s| match s {
                NextStep::Advance { kind, routes, .. } => Some((*kind, routes.canary, routes.mirror)),
                NextStep::Promote => None,
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                Some((StepKind::Iteration, 0, true)),
                Some((StepKind::Iteration, 0, true)),
                Some((StepKind::SwitchToCanary, 100, false)),
                None
            ]
        );
        assert_eq!(strategy.steps_to_promotion(), 3);
    }

    #[test]
    fn kubernetes_provider_forces_blue_green_without_mirroring() {
        let canary_spec = spec_with(CanaryAnalysis { step_weight: Some(10), mirror: true, ..Default::default() });
        assert_eq!(
            strategy_of(&canary_spec, Provider::Kubernetes),
            Strategy::BlueGreen { iterations: 10, mirror: false }
        );
        let ab_spec = spec_with(CanaryAnalysis {
            iterations: Some(4),
            match_: Some(vec![HttpMatch::default()]),
            ..Default::default()
        });
        assert_eq!(strategy_of(&ab_spec, Provider::Kubernetes), Strategy::BlueGreen { iterations: 4, mirror: false });
    }

    #[test]
    fn zero_max_weight_promotes_without_steps() {
        let spec = spec_with(CanaryAnalysis { max_weight: Some(0), step_weight: Some(0), ..Default::default() });
        let strategy = strategy_of(&spec, Provider::Istio);
        assert_eq!(strategy.next_step(0, 0), NextStep::Promote);
        assert_eq!(strategy.steps_to_promotion(), 0);
    }

    #[test]
    fn promotion_steps_walk_the_weight_down() {
        assert_eq!(weight_after_promotion_step(50, Some(20)), 30);
        assert_eq!(weight_after_promotion_step(10, Some(20)), 0);
        assert_eq!(weight_after_promotion_step(50, None), 0);
        let spec = spec_with(CanaryAnalysis { step_weight_promotion: Some(0), ..Default::default() });
        assert_eq!(promotion_step(&spec), None);
    }

    #[test]
    fn webhook_and_metric_durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "10", "s", "10x", "1..5s", "-1s", "10 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn comparison_ticks_are_the_steps_before_the_first_that_needs_judged_comparisons() {
        let mut strategies = vec![
            Strategy::AbTesting { iterations: 3 },
            Strategy::BlueGreen { iterations: 4, mirror: true },
            Strategy::BlueGreen { iterations: 1, mirror: false },
        ];
        for (step, max) in [(20, 40), (10, 100), (50, 100), (0, 100), (30, 0), (33, 99), (100, 100)] {
            for mirror in [false, true] {
                let analysis =
                    CanaryAnalysis { step_weight: Some(step), max_weight: Some(max), mirror, ..Default::default() };
                strategies.push(strategy_of(&spec_with(analysis), Provider::Istio));
            }
        }
        strategies.push(strategy_of(
            &spec_with(CanaryAnalysis { step_weights: Some(vec![1, 5, 5, 100]), ..Default::default() }),
            Provider::Istio,
        ));
        for strategy in strategies {
            // Tick 0 takes the first step without metrics; tick i ≥ 1 (with metrics)
            // takes step i + 1. The first step that waits is taken at tick `index`.
            let first_waiting = walk(&strategy).iter().position(|s| s.needs_judged_comparisons());
            assert_eq!(first_waiting, Some(strategy.comparison_ticks() as usize), "{strategy:?}");
        }
        let issue_example =
            spec_with(CanaryAnalysis { step_weight: Some(20), max_weight: Some(40), ..Default::default() });
        assert_eq!(strategy_of(&issue_example, Provider::GatewayApi).comparison_ticks(), 2);
    }

    #[test]
    fn the_mirror_step_comes_first_even_without_weight_to_add() {
        let spec = CanarySpec {
            analysis: Some(CanaryAnalysis { max_weight: Some(0), mirror: true, ..CanaryAnalysis::default() }),
            ..CanarySpec::default()
        };
        let strategy = strategy_of(&spec, Provider::GatewayApi);
        assert!(matches!(strategy.next_step(0, 0), NextStep::Advance { kind: StepKind::Mirror, .. }));
        assert_eq!(strategy.next_step(0, 1), NextStep::Promote);
    }
}
