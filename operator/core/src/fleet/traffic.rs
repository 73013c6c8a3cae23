//! Blast radius: how much of the fleet's traffic a bad release can reach before the
//! fleet halts. Pure.
//!
//! Each member states its share of the fleet's traffic with a label on its `Cluster`
//! ([`TRAFFIC_SHARE_LABEL`], a percentage such as `"30"` or `"2.5"`), or measures its
//! own request rate (petrel in member mode with `--traffic-rate-query`, published in its
//! `ClusterIdentity` and copied by the hub into the Cluster's `status.traffic`). The
//! label wins when both exist: it is what the platform team decided, and it keeps the
//! plan a function of the objects in Git. Members without a label share what the labels
//! leave of the fleet (100% − Σ labels) in proportion to their measured rates
//! ([`member_shares`]); a rate older than [`RATE_STALE_AFTER`], a failed query or no rate
//! at all is unknown, and so is every measured share while the fleet's total is unknown.
//!
//! The worst case a bad release can do is bounded by the first wave: each of its
//! members sends at most its Canary's `maxWeight` of its traffic to the release before
//! the analysis rolls it back, and a failed first wave opens no later wave. So the
//! exposure is Σ over the first wave's members of share × maxWeight.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeDelta, Utc};

use super::plan::{ClusterName, Membership, RolloutPlan, assign_waves};
use crate::provider::Provider;
use crate::strategy::strategy_of;
use petrel_api::canary::CanarySpec;
use petrel_api::cluster_identity::TrafficRate;

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

/// A measured rate older than this is unknown: the member refreshes it every minute, so
/// five missed refreshes mean its petrel or its metrics server is not answering.
pub const RATE_STALE_AFTER: TimeDelta = TimeDelta::minutes(5);

/// Where a member's share of the fleet's traffic comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShareSource {
    /// Its Cluster's [`TRAFFIC_SHARE_LABEL`].
    Label,
    /// Its own measured request rate, against the other measured members'.
    Metric,
}

impl ShareSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ShareSource::Label => "label",
            ShareSource::Metric => "metric",
        }
    }
}

/// A member's share of the fleet's traffic, in percent, or why it is not known.
#[derive(Clone, Debug, PartialEq)]
pub enum MemberShare {
    Known { percent: f64, source: ShareSource },
    Unknown(String),
}

impl MemberShare {
    pub fn percent(&self) -> Option<f64> {
        match self {
            MemberShare::Known { percent, .. } => Some(*percent),
            MemberShare::Unknown(_) => None,
        }
    }
}

/// What one member states about its traffic: its Cluster's labels and the rate it
/// last measured, if any.
#[derive(Clone, Copy, Debug)]
pub struct StatedTraffic<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub rate: Option<&'a TrafficRate>,
}

/// Why a measured rate cannot be used at `now`, or the rate.
fn fresh_rate(rate: Option<&TrafficRate>, now: DateTime<Utc>) -> Result<f64, String> {
    let Some(rate) = rate else {
        return Err(format!(
            "no {TRAFFIC_SHARE_LABEL} label and no measured request rate (petrel there has no --traffic-rate-query, or the hub has not read it yet)"
        ));
    };
    let Some(at) = rate.measured_at else { return Err("its measured request rate has no time".into()) };
    if let Some(error) = &rate.error {
        return Err(format!("its request-rate query fails: {error}"));
    }
    let Some(rps) = rate.requests_per_second.filter(|r| r.is_finite() && *r >= 0.0) else {
        return Err("its measured request rate is not a number of requests per second".into());
    };
    let age = now - at;
    if age > RATE_STALE_AFTER {
        return Err(format!(
            "its request rate was measured {}m ago (stale after {}m)",
            age.num_minutes(),
            RATE_STALE_AFTER.num_minutes()
        ));
    }
    Ok(rps)
}

/// Each member's share of the fleet's traffic, in the order given, and the labels that
/// cannot be read (one sentence each, naming the member). `members` are the Rollout's
/// members: the fleet whose traffic the shares divide. Pure.
///
/// A readable label is the share. A member without a label takes
/// `(100 − Σ label shares) × rate / Σ rates` of the members measured by metric — when
/// every member has a known share or a fresh rate, the rates add up to more than 0 and
/// the labels leave something to share; otherwise every measured share is unknown too,
/// with the reason (a share of an unknown total would be a guess).
pub fn member_shares(members: &[(&str, StatedTraffic<'_>)], now: DateTime<Utc>) -> (Vec<MemberShare>, Vec<String>) {
    let mut problems = Vec::new();
    // Per member: Ok(share) from a label, Err(Ok(rate)) measured, Err(Err(why)) unknown.
    let stated: Vec<Result<f64, Result<f64, String>>> = members
        .iter()
        .map(|(cluster, traffic)| match traffic_share(traffic.labels) {
            Some(Ok(share)) => Ok(share),
            Some(Err(e)) => {
                problems.push(format!("cluster {cluster}: {e}"));
                Err(Err(e.to_string()))
            }
            None => Err(fresh_rate(traffic.rate, now)),
        })
        .collect();
    let labelled: f64 = stated.iter().filter_map(|s| s.as_ref().ok()).sum();
    let measured: f64 = stated.iter().filter_map(|s| s.as_ref().err()?.as_ref().ok()).sum();
    let unknown: Vec<&str> =
        members.iter().zip(&stated).filter(|(_, s)| matches!(s, Err(Err(_)))).map(|((c, _), _)| *c).collect();
    let remainder = 100.0 - labelled;
    let why_not_measured = if !unknown.is_empty() {
        Some(format!("the fleet's total request rate is unknown: no share for {}", unknown.join(", ")))
    } else if measured <= 0.0 {
        Some("the measured request rates of the members without a label add up to 0 requests/s".to_string())
    } else if remainder <= 0.0 {
        Some(format!(
            "the {TRAFFIC_SHARE_LABEL} labels add up to {}%, leaving no share for the members measured by metric",
            percent(labelled)
        ))
    } else {
        None
    };
    let shares = stated
        .into_iter()
        .map(|s| match s {
            Ok(percent) => MemberShare::Known { percent, source: ShareSource::Label },
            Err(Err(why)) => MemberShare::Unknown(why),
            Err(Ok(rate)) => match &why_not_measured {
                Some(why) => MemberShare::Unknown(format!("measured {} requests/s, but {why}", percent(rate))),
                None => MemberShare::Known { percent: remainder * rate / measured, source: ShareSource::Metric },
            },
        })
        .collect();
    (shares, problems)
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
    /// The request rate it last measured, as the hub copied it (`status.traffic`).
    pub rate: Option<&'a TrafficRate>,
    /// Its Canary's worst-case weight (see [`worst_case_weight`]), as the hub recorded it.
    pub max_weight: Option<i32>,
}

/// The traffic share of one wave.
#[derive(Clone, Debug, PartialEq)]
pub struct WaveTraffic {
    pub wave: String,
    /// Sum of the known shares of its members.
    pub share: f64,
    pub members: Vec<ClusterName>,
    /// Members whose share is unknown: the wave's share is at least `share`.
    pub unknown: Vec<ClusterName>,
}

/// How much of the fleet's traffic a bad release can reach.
#[derive(Clone, Debug, PartialEq)]
pub struct BlastRadius {
    pub waves: Vec<WaveTraffic>,
    /// Each member's share (see [`member_shares`]) and where it comes from.
    pub shares: BTreeMap<ClusterName, MemberShare>,
    /// Share of the fleet's traffic in members no wave selects.
    pub unassigned: f64,
    /// Sum of every known share of the Rollout's members.
    pub total: f64,
    /// Whether every member of the Rollout has a known share.
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

/// The blast radius of `plan` over `members` at `now` (measured rates go stale). Pure.
pub fn blast_radius(plan: &RolloutPlan, members: &[MemberTraffic<'_>], now: DateTime<Utc>) -> BlastRadius {
    let memberships = assign_waves(plan, members.iter().map(|m| m.labels));
    let mut waves: Vec<WaveTraffic> = plan
        .waves
        .iter()
        .map(|w| WaveTraffic { wave: w.name.clone(), share: 0.0, members: Vec::new(), unknown: Vec::new() })
        .collect();
    let in_rollout: Vec<(&MemberTraffic<'_>, &Membership)> =
        members.iter().zip(&memberships).filter(|(_, m)| **m != Membership::Excluded).collect();
    let stated: Vec<(&str, StatedTraffic<'_>)> =
        in_rollout.iter().map(|(m, _)| (m.cluster, StatedTraffic { labels: m.labels, rate: m.rate })).collect();
    let (member_shares, mut problems) = member_shares(&stated, now);
    let (mut unassigned, mut total, mut complete) = (0.0, 0.0, true);
    let mut shares: BTreeMap<ClusterName, MemberShare> = BTreeMap::new();
    for ((member, membership), share) in in_rollout.iter().zip(member_shares) {
        let known = share.percent();
        complete &= known.is_some();
        total += known.unwrap_or(0.0);
        match membership {
            Membership::Wave(w) => {
                let wave = &mut waves[*w];
                wave.members.push(member.cluster.to_string());
                match known {
                    Some(known) => wave.share += known,
                    None => wave.unknown.push(member.cluster.to_string()),
                }
            }
            Membership::Unassigned => unassigned += known.unwrap_or(0.0),
            Membership::Excluded => {}
        }
        shares.insert(member.cluster.to_string(), share);
    }
    for wave in &mut waves {
        wave.members.sort();
        wave.unknown.sort();
    }
    let exposure = match waves.iter().find(|w| !w.members.is_empty()) {
        None => Err("no wave has a member".to_string()),
        Some(first) if !first.unknown.is_empty() => Err(format!(
            "the first wave's share is unknown: {}",
            first
                .unknown
                .iter()
                .map(|c| match shares.get(c) {
                    Some(MemberShare::Unknown(why)) => format!("{c}: {why}"),
                    _ => c.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        )),
        Some(first) => {
            let mut terms = Vec::new();
            let mut missing = Vec::new();
            for cluster in &first.members {
                let weight = members.iter().find(|m| m.cluster == cluster).and_then(|m| m.max_weight);
                // Every member of this wave has a share (its `unknown` list is empty).
                match (shares.get(cluster).and_then(MemberShare::percent), weight) {
                    (Some(share), Some(weight)) => terms.push((cluster.clone(), share, weight)),
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
    if complete && !in_rollout.is_empty() && (total - 100.0).abs() > 0.01 {
        problems.push(format!("the traffic shares of the Rollout's clusters add up to {}%, not 100%", percent(total)));
    } else if !complete && total > 100.01 {
        problems.push(format!("the traffic shares stated add up to {}%, more than 100%", percent(total)));
    }
    BlastRadius { waves, shares, unassigned, total, complete, exposure, problems }
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
    use petrel_api::rollout::RolloutSpec;
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
        let member = |cluster, labels, max_weight| MemberTraffic { cluster, labels, rate: None, max_weight };
        let radius = blast_radius(
            &plan(),
            &[
                member("staging", &staging, Some(50)),
                member("eu", &eu, Some(50)),
                member("us", &us, None),
                member("ap", &ap, Some(50)),
                member("lab", &lab, None),
            ],
            now(),
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
                MemberTraffic { cluster: "staging", labels: &canary_bad, rate: None, max_weight: Some(50) },
                MemberTraffic { cluster: "eu", labels: &prod, rate: None, max_weight: Some(50) },
            ],
            now(),
        );
        assert!(!radius.complete);
        assert_eq!(radius.waves[0].unknown, ["staging"]);
        assert_eq!(radius.problems.len(), 2, "{:?}", radius.problems);
        assert!(radius.problems[0].starts_with("cluster staging: petrel.dev/traffic-share=\"lots\" is not a number"));
        assert!(radius.problems[1].contains("more than 100"));
        let why = radius.exposure.unwrap_err();
        assert!(why.contains("staging") && why.contains(TRAFFIC_SHARE_LABEL) && why.contains("lots"), "{why}");

        // Shares that are readable but do not add up to the whole fleet are pointed out.
        let canary = labels(&[("role", "canary"), (TRAFFIC_SHARE_LABEL, "5")]);
        let eu = labels(&[("env", "production"), (TRAFFIC_SHARE_LABEL, "80")]);
        let radius = blast_radius(
            &plan(),
            &[
                MemberTraffic { cluster: "staging", labels: &canary, rate: None, max_weight: None },
                MemberTraffic { cluster: "eu", labels: &eu, rate: None, max_weight: Some(50) },
            ],
            now(),
        );
        assert_eq!(radius.problems, ["the traffic shares of the Rollout's clusters add up to 85%, not 100%"]);
        assert!(radius.exposure.unwrap_err().contains("maxWeight of staging"));
    }

    fn now() -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap()
    }

    fn rate(rps: f64, seconds_ago: i64) -> TrafficRate {
        TrafficRate {
            requests_per_second: Some(rps),
            measured_at: Some(now() - TimeDelta::seconds(seconds_ago)),
            error: None,
        }
    }

    fn shares_of(members: &[(&str, &BTreeMap<String, String>, Option<&TrafficRate>)]) -> Vec<MemberShare> {
        let stated: Vec<(&str, StatedTraffic<'_>)> =
            members.iter().map(|(c, labels, rate)| (*c, StatedTraffic { labels, rate: *rate })).collect();
        member_shares(&stated, now()).0
    }

    fn metric(percent: f64) -> MemberShare {
        MemberShare::Known { percent, source: ShareSource::Metric }
    }

    fn unknown_reason(share: &MemberShare) -> &str {
        match share {
            MemberShare::Unknown(why) => why,
            known => panic!("expected unknown, got {known:?}"),
        }
    }

    #[test]
    fn measured_rates_divide_the_fleet_in_proportion() {
        let none = BTreeMap::new();
        let (a, b, c) = (rate(100.0, 30), rate(600.0, 0), rate(1300.0, 240));
        let shares = shares_of(&[("a", &none, Some(&a)), ("b", &none, Some(&b)), ("c", &none, Some(&c))]);
        assert_eq!(shares, vec![metric(5.0), metric(30.0), metric(65.0)]);
    }

    #[test]
    fn labels_win_and_measured_members_share_what_the_labels_leave() {
        let five = labels(&[(TRAFFIC_SHARE_LABEL, "5")]);
        let none = BTreeMap::new();
        // The labelled member also measures a rate: its label is what counts.
        let (own, b, c) = (rate(900.0, 0), rate(300.0, 0), rate(650.0, 0));
        let shares = shares_of(&[("a", &five, Some(&own)), ("b", &none, Some(&b)), ("c", &none, Some(&c))]);
        assert_eq!(shares[0], MemberShare::Known { percent: 5.0, source: ShareSource::Label });
        assert!((shares[1].percent().unwrap() - 95.0 * 300.0 / 950.0).abs() < 1e-9, "{shares:?}");
        assert!((shares[2].percent().unwrap() - 95.0 * 650.0 / 950.0).abs() < 1e-9, "{shares:?}");
        assert_eq!(shares[1..].iter().map(|s| s.percent().unwrap()).sum::<f64>().round(), 95.0);

        // Labels that leave nothing: the measured shares are not invented.
        let all = labels(&[(TRAFFIC_SHARE_LABEL, "100")]);
        let shares = shares_of(&[("a", &all, None), ("b", &none, Some(&b))]);
        assert!(unknown_reason(&shares[1]).contains("add up to 100%"), "{shares:?}");
    }

    #[test]
    fn a_zero_total_rate_is_unknown_not_a_division() {
        let none = BTreeMap::new();
        let (a, b) = (rate(0.0, 0), rate(0.0, 10));
        let shares = shares_of(&[("a", &none, Some(&a)), ("b", &none, Some(&b))]);
        for share in &shares {
            assert!(unknown_reason(share).contains("add up to 0 requests/s"), "{share:?}");
        }
    }

    #[test]
    fn stale_failed_or_missing_rates_are_unknown_and_so_is_every_measured_share() {
        let none = BTreeMap::new();
        let fresh = rate(500.0, 60);
        let stale = rate(500.0, 6 * 60);
        let failed = TrafficRate {
            requests_per_second: None,
            measured_at: Some(now()),
            error: Some("bad_data: parse error".into()),
        };
        let shares = shares_of(&[("a", &none, Some(&fresh)), ("b", &none, Some(&stale))]);
        assert!(unknown_reason(&shares[1]).contains("measured 6m ago (stale after 5m)"), "{shares:?}");
        let why = unknown_reason(&shares[0]);
        assert!(why.contains("measured 500 requests/s") && why.contains("no share for b"), "{why}");

        let shares = shares_of(&[("a", &none, Some(&fresh)), ("b", &none, Some(&failed)), ("c", &none, None)]);
        assert!(unknown_reason(&shares[1]).contains("query fails: bad_data: parse error"), "{shares:?}");
        assert!(unknown_reason(&shares[2]).contains("no measured request rate"), "{shares:?}");
        assert!(unknown_reason(&shares[0]).contains("no share for b, c"), "{shares:?}");

        // Just inside the limit is fresh.
        let edge = rate(500.0, 5 * 60);
        assert_eq!(
            shares_of(&[("a", &none, Some(&fresh)), ("b", &none, Some(&edge))]),
            vec![metric(50.0), metric(50.0)]
        );
    }

    #[test]
    fn an_unreadable_label_is_unknown_even_with_a_measured_rate() {
        let bad = labels(&[(TRAFFIC_SHARE_LABEL, "lots")]);
        let none = BTreeMap::new();
        let a = rate(10.0, 0);
        let stated = [
            ("a", StatedTraffic { labels: &bad, rate: Some(&a) }),
            ("b", StatedTraffic { labels: &none, rate: Some(&a) }),
        ];
        let (shares, problems) = member_shares(&stated, now());
        assert!(unknown_reason(&shares[0]).contains("not a number"), "{shares:?}");
        assert!(unknown_reason(&shares[1]).contains("no share for a"), "{shares:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
    }

    #[test]
    fn the_blast_radius_of_a_fleet_measured_by_metric() {
        let staging = labels(&[("role", "canary")]);
        let eu = labels(&[("env", "production"), (TRAFFIC_SHARE_LABEL, "30")]);
        let us = labels(&[("env", "production")]);
        let ap = labels(&[("env", "production")]);
        let (r_staging, r_us, r_ap) = (rate(50.0, 0), rate(300.0, 0), rate(350.0, 0));
        let member = |cluster, labels, rate, max_weight| MemberTraffic { cluster, labels, rate, max_weight };
        let radius = blast_radius(
            &plan(),
            &[
                member("staging", &staging, Some(&r_staging), Some(50)),
                member("eu", &eu, None, Some(50)),
                member("us", &us, Some(&r_us), Some(50)),
                member("ap", &ap, Some(&r_ap), Some(50)),
            ],
            now(),
        );
        assert!(radius.complete && radius.problems.is_empty(), "{:?}", radius.problems);
        assert_eq!(radius.shares["staging"], metric(5.0));
        assert_eq!(radius.shares["eu"], MemberShare::Known { percent: 30.0, source: ShareSource::Label });
        assert_eq!(radius.waves[1].share, 95.0);
        assert_eq!(radius.exposure.unwrap().percent, 2.5);

        // The same fleet ten minutes later, nobody having measured since.
        let later = now() + TimeDelta::minutes(10);
        let members = [member("staging", &staging, Some(&r_staging), Some(50)), member("eu", &eu, None, Some(50))];
        let radius = blast_radius(&plan(), &members, later);
        assert!(!radius.complete);
        let why = radius.exposure.unwrap_err();
        assert!(why.contains("staging: its request rate was measured 10m ago"), "{why}");
    }

    #[test]
    fn percentages_read_like_a_person_wrote_them() {
        assert_eq!(percent(30.0), "30");
        assert_eq!(percent(2.5), "2.5");
        assert_eq!(percent(0.254), "0.25");
        assert_eq!(percent(1.0 / 3.0), "0.33");
    }
}
