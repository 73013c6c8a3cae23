//! A Rollout's waves, parsed once, and which wave each member falls in.

use std::collections::{BTreeMap, BTreeSet};

use chrono::TimeDelta;

use crate::strategy::{DurationError, parse_duration};
use petrel_api::common::IntOrString;
use petrel_api::rollout::{Approval, ClusterSelector, FailurePolicy, RolloutSpec, Wave};

/// Name of a `Cluster` object on the hub.
pub type ClusterName = String;

/// Default `progressDeadline` of a wave: never unbounded, so an unreachable or stalled
/// member cannot block a Rollout forever.
pub const DEFAULT_PROGRESS_DEADLINE: TimeDelta = TimeDelta::minutes(30);

/// A Rollout spec with every duration and share parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutPlan {
    /// Which Clusters take part at all.
    pub clusters: ClusterSelector,
    pub waves: Vec<WavePlan>,
    pub on_failure: FailurePolicy,
    pub paused: bool,
}

/// One wave with its limits resolved to numbers and durations.
#[derive(Clone, Debug, PartialEq)]
pub struct WavePlan {
    pub name: String,
    pub selector: ClusterSelector,
    pub max_concurrency: Share,
    pub max_failures: Share,
    pub soak: TimeDelta,
    pub approval: Approval,
    pub progress_deadline: TimeDelta,
}

/// A count, or a percentage of a wave's members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Share {
    Count(u32),
    Percent(u32),
}

impl Share {
    /// The share of `total` members, percentages rounded down.
    pub fn of(self, total: usize) -> usize {
        match self {
            Share::Count(n) => n as usize,
            Share::Percent(p) => total * p as usize / 100,
        }
    }

    /// Concurrency limit of a wave of `total` members: rounded down but at least 1, so a
    /// small wave with `10%` still moves.
    pub fn concurrency_of(self, total: usize) -> usize {
        self.of(total).max(1)
    }
}

/// A Rollout spec petrel cannot act on, said so a person can fix it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the Rollout has no waves: add at least one (usually the canary cluster first)")]
    NoWaves,
    #[error("wave name {0:?} is used more than once; wave names must be unique")]
    DuplicateWave(String),
    #[error("wave {wave:?}: {field} {value:?} is not valid: {why}")]
    BadShare { wave: String, field: &'static str, value: String, why: &'static str },
    #[error("wave {wave:?}: {field}: {source}")]
    BadDuration {
        wave: String,
        field: &'static str,
        #[source]
        source: DurationError,
    },
}

impl RolloutPlan {
    /// Parses a spec. The CRD's validation rejects most of these errors already; this
    /// check stands for objects written before a rule existed, and for unit tests.
    pub fn from_spec(spec: &RolloutSpec) -> Result<Self, PlanError> {
        if spec.waves.is_empty() {
            return Err(PlanError::NoWaves);
        }
        let mut names = BTreeSet::new();
        let mut waves = Vec::with_capacity(spec.waves.len());
        for wave in &spec.waves {
            if !names.insert(wave.name.as_str()) {
                return Err(PlanError::DuplicateWave(wave.name.clone()));
            }
            waves.push(WavePlan::from_wave(wave)?);
        }
        Ok(Self { clusters: spec.clusters.clone(), waves, on_failure: spec.on_failure, paused: spec.paused })
    }
}

impl WavePlan {
    fn from_wave(wave: &Wave) -> Result<Self, PlanError> {
        let share = |field, value: &Option<IntOrString>, default, min| match value {
            None => Ok(default),
            Some(value) => parse_share(value, min).map_err(|why| PlanError::BadShare {
                wave: wave.name.clone(),
                field,
                value: match value {
                    IntOrString::Int(i) => i.to_string(),
                    IntOrString::String(s) => s.clone(),
                },
                why,
            }),
        };
        let duration = |field, value: &Option<String>, default| match value {
            None => Ok(default),
            Some(text) => parse_duration(text)
                .map_err(|source| PlanError::BadDuration { wave: wave.name.clone(), field, source })
                .and_then(|d| {
                    // parse_duration caps at Go's ~290 years, well inside TimeDelta's range.
                    TimeDelta::from_std(d).map_err(|_| PlanError::BadDuration {
                        wave: wave.name.clone(),
                        field,
                        source: DurationError { text: text.clone(), why: "too long" },
                    })
                }),
        };
        Ok(Self {
            name: wave.name.clone(),
            selector: wave.cluster_selector.clone(),
            max_concurrency: share("maxConcurrency", &wave.max_concurrency, Share::Percent(100), 1)?,
            max_failures: share("maxFailures", &wave.max_failures, Share::Count(0), 0)?,
            soak: duration("soak", &wave.soak, TimeDelta::zero())?,
            approval: wave.approval,
            progress_deadline: duration("progressDeadline", &wave.progress_deadline, DEFAULT_PROGRESS_DEADLINE)?,
        })
    }
}

/// Parses `3` or `25%`; `min` is the smallest count or percentage accepted.
fn parse_share(value: &IntOrString, min: u32) -> Result<Share, &'static str> {
    let too_small = if min == 0 { "must not be negative" } else { "must be at least 1 (or 1%)" };
    match value {
        IntOrString::Int(n) => {
            let n = u32::try_from(*n).map_err(|_| too_small)?;
            if n < min {
                return Err(too_small);
            }
            Ok(Share::Count(n))
        }
        // A count written as a string ("3") is a count, as the CRD's rule allows.
        IntOrString::String(text) if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u32 = text.parse().map_err(|_| "the count is too large")?;
            if n < min {
                return Err(too_small);
            }
            Ok(Share::Count(n))
        }
        IntOrString::String(text) => {
            let digits = text.strip_suffix('%').ok_or("expected a count such as 3 or a percentage such as 25%")?;
            let p: u32 = digits.parse().map_err(|_| "expected a count such as 3 or a percentage such as 25%")?;
            if p < min {
                return Err(too_small);
            }
            if p > 100 {
                return Err("a percentage cannot exceed 100%");
            }
            Ok(Share::Percent(p))
        }
    }
}

/// Where one member falls in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// The Rollout's `clusters` selector does not select it: not part of this Rollout.
    Excluded,
    /// Index of the first wave whose selector matches it.
    Wave(usize),
    /// Selected by the Rollout but by no wave: reported, never released to.
    Unassigned,
}

/// The wave of each member (same order as `labels`): the FIRST wave whose selector
/// matches wins, so overlapping selectors are fine and a catch-all last wave is easy.
pub fn assign_waves<'a>(
    plan: &RolloutPlan,
    labels: impl IntoIterator<Item = &'a BTreeMap<String, String>>,
) -> Vec<Membership> {
    labels
        .into_iter()
        .map(|labels| {
            if !plan.clusters.matches(labels) {
                return Membership::Excluded;
            }
            plan.waves
                .iter()
                .position(|wave| wave.selector.matches(labels))
                .map_or(Membership::Unassigned, Membership::Wave)
        })
        .collect()
}

/// What a plan does to a given set of Clusters that a person should know about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanReport {
    /// Waves that get no member (their selector matches nothing, or only members an
    /// earlier wave already took).
    pub empty_waves: Vec<String>,
    /// Members the Rollout selects that no wave selects: they never get the release.
    pub unassigned: Vec<ClusterName>,
    /// Members per wave, in wave order (for `kubectl petrel plan`).
    pub members_per_wave: Vec<(String, Vec<ClusterName>)>,
}

impl PlanReport {
    /// One line per problem, for a condition message or an Event.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .empty_waves
            .iter()
            .map(|w| {
                format!(
                    "wave {w:?} selects no cluster (its selector matches none, or only clusters an earlier wave took)"
                )
            })
            .collect();
        if !self.unassigned.is_empty() {
            out.push(format!(
                "{} cluster(s) selected by the Rollout fall in no wave and will not get the release: {}",
                self.unassigned.len(),
                self.unassigned.join(", ")
            ));
        }
        out
    }
}

/// Dry run of a plan over Clusters given as (name, labels): which wave each falls in,
/// waves left empty, members left out. Pure; `kubectl petrel plan` prints it.
pub fn validate_plan<'a>(
    plan: &RolloutPlan,
    clusters: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> PlanReport {
    let clusters: Vec<(&str, &BTreeMap<String, String>)> = clusters.into_iter().collect();
    let memberships = assign_waves(plan, clusters.iter().map(|(_, labels)| *labels));
    let mut per_wave: Vec<Vec<ClusterName>> = vec![Vec::new(); plan.waves.len()];
    let mut unassigned = Vec::new();
    for ((name, _), membership) in clusters.iter().zip(&memberships) {
        match membership {
            Membership::Wave(i) => per_wave[*i].push((*name).to_string()),
            Membership::Unassigned => unassigned.push((*name).to_string()),
            Membership::Excluded => {}
        }
    }
    for members in &mut per_wave {
        members.sort();
    }
    unassigned.sort();
    PlanReport {
        empty_waves: plan
            .waves
            .iter()
            .zip(&per_wave)
            .filter(|(_, members)| members.is_empty())
            .map(|(wave, _)| wave.name.clone())
            .collect(),
        unassigned,
        members_per_wave: plan.waves.iter().map(|w| w.name.clone()).zip(per_wave).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_api::rollout::{CanaryRef, LabelOperator, LabelRequirement};

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn wave(name: &str, match_labels: &[(&str, &str)]) -> Wave {
        Wave {
            name: name.into(),
            cluster_selector: ClusterSelector { match_labels: labels(match_labels), match_expressions: vec![] },
            ..Wave::default()
        }
    }

    fn spec(waves: Vec<Wave>) -> RolloutSpec {
        RolloutSpec {
            canary_ref: CanaryRef { namespace: "test".into(), name: "podinfo".into() },
            clusters: ClusterSelector { match_labels: labels(&[("env", "prod")]), match_expressions: vec![] },
            waves,
            ..RolloutSpec::default()
        }
    }

    #[test]
    fn defaults_are_all_at_once_no_failures_no_soak_and_a_thirty_minute_deadline() {
        let plan = RolloutPlan::from_spec(&spec(vec![wave("all", &[])])).unwrap();
        let w = &plan.waves[0];
        assert_eq!(w.max_concurrency, Share::Percent(100));
        assert_eq!(w.max_failures, Share::Count(0));
        assert_eq!(w.soak, TimeDelta::zero());
        assert_eq!(w.progress_deadline, TimeDelta::minutes(30));
    }

    #[test]
    fn shares_round_down_and_concurrency_is_at_least_one() {
        assert_eq!(Share::Percent(25).of(10), 2);
        assert_eq!(Share::Percent(10).concurrency_of(3), 1);
        assert_eq!(Share::Percent(100).of(7), 7);
        assert_eq!(Share::Count(3).of(100), 3);
    }

    #[test]
    fn a_count_written_as_a_string_is_a_count() {
        let mut w = wave("eu", &[]);
        w.max_concurrency = Some(IntOrString::String("3".into()));
        w.max_failures = Some(IntOrString::String("10%".into()));
        let plan = RolloutPlan::from_spec(&spec(vec![w])).unwrap();
        assert_eq!(plan.waves[0].max_concurrency, Share::Count(3));
        assert_eq!(plan.waves[0].max_failures, Share::Percent(10));
    }

    #[test]
    fn bad_specs_are_explained() {
        assert_eq!(RolloutPlan::from_spec(&spec(vec![])), Err(PlanError::NoWaves));
        let error = RolloutPlan::from_spec(&spec(vec![wave("eu", &[]), wave("eu", &[])])).unwrap_err();
        assert_eq!(error, PlanError::DuplicateWave("eu".into()));

        let mut bad = wave("eu", &[]);
        bad.max_concurrency = Some(IntOrString::String("150%".into()));
        let error = RolloutPlan::from_spec(&spec(vec![bad])).unwrap_err().to_string();
        assert!(error.contains("maxConcurrency") && error.contains("100%"), "{error}");

        let mut bad = wave("eu", &[]);
        bad.max_concurrency = Some(IntOrString::Int(0));
        assert!(RolloutPlan::from_spec(&spec(vec![bad])).is_err());

        let mut bad = wave("eu", &[]);
        bad.soak = Some("ten minutes".into());
        let error = RolloutPlan::from_spec(&spec(vec![bad])).unwrap_err().to_string();
        assert!(error.contains("soak") && error.contains("ten minutes"), "{error}");
    }

    #[test]
    fn the_first_matching_wave_wins_and_leftovers_are_unassigned() {
        let plan = RolloutPlan::from_spec(&spec(vec![
            wave("canary", &[("role", "canary")]),
            wave("eu", &[("region", "eu")]),
            wave("us", &[("region", "us")]),
        ]))
        .unwrap();
        let canary_eu = labels(&[("env", "prod"), ("role", "canary"), ("region", "eu")]);
        let eu = labels(&[("env", "prod"), ("region", "eu")]);
        let asia = labels(&[("env", "prod"), ("region", "asia")]);
        let staging = labels(&[("env", "staging"), ("region", "eu")]);
        assert_eq!(
            assign_waves(&plan, [&canary_eu, &eu, &asia, &staging]),
            vec![Membership::Wave(0), Membership::Wave(1), Membership::Unassigned, Membership::Excluded]
        );
    }

    #[test]
    fn validation_reports_empty_and_shadowed_waves_and_left_out_members() {
        let mut shadowed = wave("eu-again", &[]);
        shadowed.cluster_selector.match_expressions.push(LabelRequirement {
            key: "region".into(),
            operator: LabelOperator::In,
            values: vec!["eu".into()],
        });
        let plan = RolloutPlan::from_spec(&spec(vec![
            wave("canary", &[("role", "canary")]),
            wave("eu", &[("region", "eu")]),
            shadowed,
        ]))
        .unwrap();
        let a = labels(&[("env", "prod"), ("region", "eu")]);
        let b = labels(&[("env", "prod"), ("region", "us")]);
        let report = validate_plan(&plan, [("a", &a), ("b", &b)]);
        assert_eq!(report.empty_waves, vec!["canary".to_string(), "eu-again".to_string()]);
        assert_eq!(report.unassigned, vec!["b".to_string()]);
        assert_eq!(report.members_per_wave[1], ("eu".to_string(), vec!["a".to_string()]));
        assert!(!report.warnings().is_empty());
        let warnings = report.warnings().join("\n");
        assert!(warnings.contains("\"canary\"") && warnings.contains("will not get the release: b"), "{warnings}");
    }
}
