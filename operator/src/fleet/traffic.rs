//! Blast radius: how much of the fleet's traffic a bad release can reach before the
//! fleet halts. Pure.
//!
//! Each member states its share of the fleet's traffic with a label on its `Cluster`
//! ([`TRAFFIC_SHARE_LABEL`], a percentage such as `"30"` or `"2.5"`). A label, rather
//! than the member's own request-rate metric, because the plan stays a function of the
//! objects on the hub: `kubectl petrel plan` answers the same for the same Git content,
//! needs no metrics backend of every member (nor its credentials) and does not change
//! with the time of day; the platform team keeps it next to the labels waves select on.
//! The price is that it is what the team says, not what the load balancer measured, so
//! a shifted load needs the label changed.
//!
//! The worst case a bad release can do is bounded by the first wave: each of its
//! members sends at most its Canary's `maxWeight` of its traffic to the release before
//! the analysis rolls it back, and a failed first wave opens no later wave. So the
//! exposure is Σ over the first wave's members of share × maxWeight.

use std::collections::BTreeMap;

use super::plan::{ClusterName, Membership, RolloutPlan, assign_waves};
use crate::api::canary::CanarySpec;
use crate::core::provider::Provider;
use crate::core::strategy::strategy_of;

/// The Cluster label stating the member's share of the fleet's traffic, in percent.
pub const TRAFFIC_SHARE_LABEL: &str = "petrel.dev/traffic-share";

/// Why a traffic share label cannot be used. It is reported, never guessed around.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrafficShareError {
    #[error("{TRAFFIC_SHARE_LABEL}={0:?} is not a number (write a percentage such as \"30\" or \"2.5\")")]
    NotANumber(String),
    #[error("{TRAFFIC_SHARE_LABEL}={0:?} is more than 100 (it is a percentage of the fleet's traffic)")]
    OutOfRange(String),
}

/// A member's stated share of the fleet's traffic, in percent (0 to 100).
pub fn parse_traffic_share(value: &str) -> Result<f64, TrafficShareError> {
    let not_a_number = || TrafficShareError::NotANumber(value.to_string());
    // Digits with an optional decimal part, nothing else: no sign, exponent, "inf" or "NaN".
    let (whole, fraction) = value.split_once('.').unwrap_or((value, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || !digits(fraction) {
        return Err(not_a_number());
    }
    let share: f64 = value.parse().map_err(|_| not_a_number())?;
    if share > 100.0 {
        return Err(TrafficShareError::OutOfRange(value.to_string()));
    }
    Ok(share)
}

/// The traffic share a Cluster's labels state: `None` when it states none.
pub fn traffic_share(labels: &BTreeMap<String, String>) -> Option<Result<f64, TrafficShareError>> {
    labels.get(TRAFFIC_SHARE_LABEL).map(|v| parse_traffic_share(v))
}

/// The highest percentage of a member's traffic its Canary sends to a release before
/// promoting it: the last canary weight of a weighted analysis, 100 for A/B testing and
/// blue/green (their last step sends every matching request, or all of them, to the
/// canary) and for `skipAnalysis` (promoted at once). A Canary that names no provider
/// runs with the member's `--provider`, which the hub cannot see; as that may be
/// `kubernetes` (blue/green), it counts as 100. `None` for a provider petrel does not know.
pub fn worst_case_weight(spec: &CanarySpec) -> Option<u8> {
    if spec.skip_analysis {
        return Some(100);
    }
    let providers = match spec.provider.as_deref() {
        Some(name) => vec![Provider::parse(name).ok()?],
        None => vec![Provider::GatewayApi, Provider::Kubernetes],
    };
    providers.into_iter().map(|p| strategy_of(spec, p).max_weight()).max()
}

/// One member as the blast radius sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberTraffic<'a> {
    pub cluster: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// Its Canary's worst-case weight (see [`worst_case_weight`]), as the hub recorded it.
    pub max_weight: Option<i32>,
}

/// The traffic share of one wave.
#[derive(Clone, Debug, PartialEq)]
pub struct WaveTraffic {
    pub wave: String,
    /// Sum of the shares its members state.
    pub share: f64,
    pub members: Vec<ClusterName>,
    /// Members that state no share, or one that cannot be read: the wave's share is at
    /// least `share`.
    pub unknown: Vec<ClusterName>,
}

/// How much of the fleet's traffic a bad release can reach.
#[derive(Clone, Debug, PartialEq)]
pub struct BlastRadius {
    pub waves: Vec<WaveTraffic>,
    /// Share of the fleet's traffic in members no wave selects.
    pub unassigned: f64,
    /// Sum of every stated share of the Rollout's members.
    pub total: f64,
    /// Whether every member of the Rollout states a readable share.
    pub complete: bool,
    /// Worst case, in percent of the fleet's traffic: Σ share × maxWeight over the first
    /// wave with members; or why it cannot be told.
    pub exposure: Result<Exposure, String>,
    /// Labels that cannot be read, one sentence each.
    pub problems: Vec<String>,
}

/// The worst-case exposure and how it adds up.
#[derive(Clone, Debug, PartialEq)]
pub struct Exposure {
    pub percent: f64,
    /// (cluster, share, maxWeight) of each first-wave member.
    pub terms: Vec<(ClusterName, f64, i32)>,
}

/// The blast radius of `plan` over `members`. Pure.
pub fn blast_radius(plan: &RolloutPlan, members: &[MemberTraffic<'_>]) -> BlastRadius {
    let memberships = assign_waves(plan, members.iter().map(|m| m.labels));
    let mut waves: Vec<WaveTraffic> = plan
        .waves
        .iter()
        .map(|w| WaveTraffic { wave: w.name.clone(), share: 0.0, members: Vec::new(), unknown: Vec::new() })
        .collect();
    let mut problems = Vec::new();
    let (mut unassigned, mut total, mut complete) = (0.0, 0.0, true);
    let mut shares: BTreeMap<&str, f64> = BTreeMap::new();
    for (member, membership) in members.iter().zip(&memberships) {
        if *membership == Membership::Excluded {
            continue;
        }
        let share = match traffic_share(member.labels) {
            Some(Ok(share)) => Some(share),
            Some(Err(e)) => {
                problems.push(format!("cluster {}: {e}", member.cluster));
                None
            }
            None => None,
        };
        complete &= share.is_some();
        total += share.unwrap_or(0.0);
        if let Some(share) = share {
            shares.insert(member.cluster, share);
        }
        match membership {
            Membership::Wave(w) => {
                let wave = &mut waves[*w];
                wave.members.push(member.cluster.to_string());
                match share {
                    Some(share) => wave.share += share,
                    None => wave.unknown.push(member.cluster.to_string()),
                }
            }
            Membership::Unassigned => unassigned += share.unwrap_or(0.0),
            Membership::Excluded => {}
        }
    }
    for wave in &mut waves {
        wave.members.sort();
        wave.unknown.sort();
    }
    let exposure = match waves.iter().find(|w| !w.members.is_empty()) {
        None => Err("no wave has a member".to_string()),
        Some(first) if !first.unknown.is_empty() => {
            Err(format!("the first wave's {} state(s) no readable {TRAFFIC_SHARE_LABEL}", first.unknown.join(", ")))
        }
        Some(first) => {
            let mut terms = Vec::new();
            let mut missing = Vec::new();
            for cluster in &first.members {
                let weight = members.iter().find(|m| m.cluster == cluster).and_then(|m| m.max_weight);
                // Every member of this wave has a share (its `unknown` list is empty).
                match (shares.get(cluster.as_str()), weight) {
                    (Some(share), Some(weight)) => terms.push((cluster.clone(), *share, weight)),
                    _ => missing.push(cluster.as_str()),
                }
            }
            if missing.is_empty() {
                let percent = terms.iter().map(|(_, share, weight)| share * f64::from(*weight) / 100.0).sum();
                Ok(Exposure { percent, terms })
            } else {
                Err(format!(
                    "the hub has not recorded the Canary maxWeight of {} yet (status.members[].maxWeight)",
                    missing.join(", ")
                ))
            }
        }
    };
    if complete && !members.is_empty() && (total - 100.0).abs() > 0.01 {
        problems.push(format!("the traffic shares of the Rollout's clusters add up to {}%, not 100%", percent(total)));
    } else if !complete && total > 100.01 {
        problems.push(format!("the traffic shares stated add up to {}%, more than 100%", percent(total)));
    }
    BlastRadius { waves, unassigned, total, complete, exposure, problems }
}

/// A percentage as a person writes it: `30`, `2.5`, `0.25`.
pub fn percent(value: f64) -> String {
    let rounded = (value * 100.0).round() / 100.0;
    let text = format!("{rounded:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::rollout::RolloutSpec;
    use serde_json::json;

    #[test]
    fn shares_are_plain_percentages_and_anything_else_is_refused() {
        assert_eq!(parse_traffic_share("30"), Ok(30.0));
        assert_eq!(parse_traffic_share("2.5"), Ok(2.5));
        assert_eq!(parse_traffic_share("0"), Ok(0.0));
        assert_eq!(parse_traffic_share("100"), Ok(100.0));
        for bad in ["", "thirty", "30%", "-5", "1e2", "inf", "NaN", ".5", "5.", "1.2.3", "0x10", "9999999"] {
            assert!(matches!(parse_traffic_share(bad), Err(TrafficShareError::NotANumber(_))), "{bad:?}");
        }
        let error = parse_traffic_share("120").unwrap_err();
        assert_eq!(error, TrafficShareError::OutOfRange("120".into()));
        assert!(error.to_string().contains("more than 100"), "{error}");
    }

    fn spec(value: serde_json::Value) -> CanarySpec {
        let mut base = json!({"targetRef": {"kind": "Deployment", "name": "podinfo"}, "service": {"port": 9898}});
        base.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn the_worst_case_weight_is_the_last_step_before_promotion() {
        let weighted = spec(json!({"provider": "istio", "analysis": {"stepWeight": 10, "maxWeight": 50}}));
        assert_eq!(worst_case_weight(&weighted), Some(50));
        let steps = spec(json!({"provider": "istio", "analysis": {"stepWeights": [1, 5, 20]}}));
        assert_eq!(worst_case_weight(&steps), Some(20));
        let blue_green = spec(json!({"provider": "istio", "analysis": {"iterations": 5}}));
        assert_eq!(worst_case_weight(&blue_green), Some(100));
        let kubernetes = spec(json!({"provider": "kubernetes", "analysis": {"stepWeight": 10, "maxWeight": 20}}));
        assert_eq!(worst_case_weight(&kubernetes), Some(100));
        let skipped = spec(json!({"provider": "istio", "skipAnalysis": true, "analysis": {"maxWeight": 20}}));
        assert_eq!(worst_case_weight(&skipped), Some(100));
        let unnamed = spec(json!({"analysis": {"stepWeight": 10, "maxWeight": 20}}));
        assert_eq!(worst_case_weight(&unnamed), Some(100), "the member's --provider may be kubernetes");
        assert_eq!(worst_case_weight(&spec(json!({"provider": "envoy"}))), None);
    }

    fn plan() -> RolloutPlan {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "canaryRef": {"namespace": "podinfo", "name": "podinfo"},
            "clusters": {"matchExpressions": [{"key": "lab", "operator": "DoesNotExist"}]},
            "waves": [
                {"name": "canary", "clusterSelector": {"matchLabels": {"role": "canary"}}},
                {"name": "production", "clusterSelector": {"matchLabels": {"env": "production"}}},
            ]
        }))
        .unwrap();
        RolloutPlan::from_spec(&spec).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_demo_fleet_exposes_its_canary_share_times_max_weight() {
        let staging = labels(&[("role", "canary"), (TRAFFIC_SHARE_LABEL, "5")]);
        let eu = labels(&[("env", "production"), (TRAFFIC_SHARE_LABEL, "30")]);
        let us = labels(&[("env", "production"), (TRAFFIC_SHARE_LABEL, "30")]);
        let ap = labels(&[("env", "production"), (TRAFFIC_SHARE_LABEL, "35")]);
        let lab = labels(&[("lab", "yes"), (TRAFFIC_SHARE_LABEL, "oops")]);
        let member = |cluster, labels, max_weight| MemberTraffic { cluster, labels, max_weight };
        let radius = blast_radius(
            &plan(),
            &[
                member("staging", &staging, Some(50)),
                member("eu", &eu, Some(50)),
                member("us", &us, None),
                member("ap", &ap, Some(50)),
                member("lab", &lab, None),
            ],
        );
        assert_eq!(radius.waves[0].share, 5.0);
        assert_eq!(radius.waves[1].share, 95.0);
        assert_eq!(radius.waves[1].members, ["ap", "eu", "us"]);
        assert!(radius.complete && radius.problems.is_empty(), "{:?}", radius.problems);
        let exposure = radius.exposure.unwrap();
        assert_eq!(exposure.percent, 2.5);
        assert_eq!(exposure.terms, vec![("staging".to_string(), 5.0, 50)]);
    }

    #[test]
    fn unreadable_or_missing_shares_are_said_and_never_guessed() {
        let canary_bad = labels(&[("role", "canary"), (TRAFFIC_SHARE_LABEL, "lots")]);
        let prod = labels(&[("env", "production"), (TRAFFIC_SHARE_LABEL, "150")]);
        let radius = blast_radius(
            &plan(),
            &[
                MemberTraffic { cluster: "staging", labels: &canary_bad, max_weight: Some(50) },
                MemberTraffic { cluster: "eu", labels: &prod, max_weight: Some(50) },
            ],
        );
        assert!(!radius.complete);
        assert_eq!(radius.waves[0].unknown, ["staging"]);
        assert_eq!(radius.problems.len(), 2, "{:?}", radius.problems);
        assert!(radius.problems[0].starts_with("cluster staging: petrel.dev/traffic-share=\"lots\" is not a number"));
        assert!(radius.problems[1].contains("more than 100"));
        let why = radius.exposure.unwrap_err();
        assert!(why.contains("staging") && why.contains(TRAFFIC_SHARE_LABEL), "{why}");

        // Shares that are readable but do not add up to the whole fleet are pointed out.
        let canary = labels(&[("role", "canary"), (TRAFFIC_SHARE_LABEL, "5")]);
        let eu = labels(&[("env", "production"), (TRAFFIC_SHARE_LABEL, "80")]);
        let radius = blast_radius(
            &plan(),
            &[
                MemberTraffic { cluster: "staging", labels: &canary, max_weight: None },
                MemberTraffic { cluster: "eu", labels: &eu, max_weight: Some(50) },
            ],
        );
        assert_eq!(radius.problems, ["the traffic shares of the Rollout's clusters add up to 85%, not 100%"]);
        assert!(radius.exposure.unwrap_err().contains("maxWeight of staging"));
    }

    #[test]
    fn percentages_read_like_a_person_wrote_them() {
        assert_eq!(percent(30.0), "30");
        assert_eq!(percent(2.5), "2.5");
        assert_eq!(percent(0.254), "0.25");
        assert_eq!(percent(1.0 / 3.0), "0.33");
    }
}
