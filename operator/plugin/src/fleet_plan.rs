//! `kubectl petrel plan <rollout>`: a dry run of a Rollout's waves over the Clusters on
//! the hub — which wave each Cluster falls in and why, which it overlaps, which fall in
//! no wave and which the Rollout leaves out. Pure: the same rules as the hub
//! ([`petrel_core::fleet::assign_waves`]: the first matching wave wins).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use super::render::{aligned, column_widths};
use petrel_api::rollout::{Approval, ClusterSelector, LabelOperator, LabelRequirement};
use petrel_api::{Cluster, Rollout};
use petrel_core::fleet::traffic::{
    BlastRadius, MemberShare, MemberTraffic, ShareSource, TRAFFIC_SHARE_LABEL, WaveTraffic, blast_radius, percent,
    traffic_share,
};
use petrel_core::fleet::{Membership, PlanError, RolloutPlan, assign_waves, validate_plan};

/// The plan of `rollout` over `clusters` at `now` (measured request rates go stale) as
/// text, or why the spec cannot be planned.
pub fn render_plan(rollout: &Rollout, clusters: &[Cluster], now: DateTime<Utc>) -> Result<String, PlanError> {
    let plan = RolloutPlan::from_spec(&rollout.spec)?;
    let name = rollout.name_any();
    let mut clusters: Vec<&Cluster> = clusters.iter().collect();
    clusters.sort_by_key(|c| c.name_any());
    let labels: Vec<&BTreeMap<String, String>> = clusters.iter().map(|c| c.labels()).collect();
    let memberships = assign_waves(&plan, labels.iter().copied());
    let names: Vec<String> = clusters.iter().map(|c| c.name_any()).collect();
    let report = validate_plan(&plan, names.iter().map(String::as_str).zip(labels.iter().copied()));
    // Where the hub last put each member, to point out a Cluster whose labels changed.
    let hub_wave =
        |cluster: &str| rollout.status.as_ref()?.members.iter().find(|m| m.cluster == cluster).map(|m| m.wave.clone());

    let max_weight = |cluster: &str| {
        rollout.status.as_ref()?.members.iter().find(|m| m.cluster == cluster).and_then(|m| m.max_weight)
    };
    let rates: Vec<_> = clusters.iter().map(|c| c.status.as_ref().and_then(|s| s.traffic.as_ref())).collect();
    let traffic: Vec<MemberTraffic<'_>> = names
        .iter()
        .zip(&labels)
        .zip(&rates)
        .map(|((name, labels), rate)| MemberTraffic {
            cluster: name,
            labels,
            rate: *rate,
            max_weight: max_weight(name),
        })
        .collect();
    let radius = blast_radius(&plan, &traffic, now);
    let shares_stated =
        clusters.iter().zip(&rates).any(|(c, rate)| traffic_share(c.labels()).is_some() || rate.is_some());
    let share_of = |i: usize| match radius.shares.get(&names[i]) {
        Some(MemberShare::Known { percent: share, source: ShareSource::Label }) => {
            format!("{}% (label)", percent(*share))
        }
        Some(MemberShare::Known { percent: share, source: ShareSource::Metric }) => {
            let rps = rates[i].and_then(|r| r.requests_per_second).unwrap_or_default();
            format!("{}% (metric, {} req/s)", percent(*share), percent(rps))
        }
        Some(MemberShare::Unknown(_)) | None => "share unknown".to_string(),
    };

    let selected = memberships.iter().filter(|m| **m != Membership::Excluded).count();
    let mut out = format!(
        "Plan of Rollout {}/{name} over the {} Cluster(s) on the hub (dry run: nothing is written)\n",
        rollout.namespace().unwrap_or_default(),
        clusters.len(),
    );
    out.push_str(&format!(
        "spec.clusters ({}) selects {selected} of them; each falls in the FIRST wave whose selector matches it\n",
        selector_text(&plan.clusters)
    ));

    for (w, wave) in plan.waves.iter().enumerate() {
        let members: Vec<usize> = (0..clusters.len()).filter(|i| memberships[*i] == Membership::Wave(w)).collect();
        let approval = match wave.approval {
            Approval::Automatic => "Automatic".to_string(),
            Approval::Manual => format!("Manual (kubectl petrel approve {name} {})", wave.name),
        };
        let mut facts = vec![
            approval,
            format!("selector {}", selector_text(&wave.selector)),
            format!("{} cluster(s)", members.len()),
        ];
        if !members.is_empty() {
            facts.push(format!("{} at a time", wave.max_concurrency.concurrency_of(members.len())));
            facts.push(format!("tolerates {} failure(s)", wave.max_failures.of(members.len())));
        }
        if !wave.soak.is_zero() {
            facts.push(format!("soak {}", rollout.spec.waves[w].soak.clone().unwrap_or_default()));
        }
        if shares_stated && !members.is_empty() {
            facts.push(share_text(&radius.waves[w]));
        }
        out.push_str(&format!("\nWave {}/{} {}: {}\n", w + 1, plan.waves.len(), wave.name, facts.join(", ")));
        if members.is_empty() {
            out.push_str("└── no cluster: its selector matches none, or only clusters an earlier wave took\n");
            continue;
        }
        let rows: Vec<Vec<String>> = members
            .iter()
            .map(|&i| {
                let mut why = vec![matched_labels(&wave.selector, labels[i])];
                let later: Vec<&str> = plan.waves[w + 1..]
                    .iter()
                    .filter(|x| x.selector.matches(labels[i]))
                    .map(|x| x.name.as_str())
                    .collect();
                if !later.is_empty() {
                    why.push(format!("also matches {} (the first matching wave wins)", later.join(", ")));
                }
                if let Some(previous) = hub_wave(&names[i])
                    && previous.as_deref() != Some(wave.name.as_str())
                {
                    why.push(format!(
                        "the hub has it in {} until its next reconcile",
                        wave_or_none(previous.as_deref())
                    ));
                }
                let mut row = vec![names[i].clone()];
                if shares_stated {
                    row.push(share_of(i));
                }
                row.push(why.join("; "));
                row
            })
            .collect();
        push_branches(&mut out, &rows);
    }

    let unassigned: Vec<usize> = (0..clusters.len()).filter(|i| memberships[*i] == Membership::Unassigned).collect();
    if !unassigned.is_empty() {
        out.push_str("\nIn no wave (selected by spec.clusters, matched by no wave; never released to)\n");
        let rows: Vec<Vec<String>> = unassigned
            .iter()
            .map(|&i| {
                let why: Vec<String> = plan
                    .waves
                    .iter()
                    .map(|wave| format!("{}: {}", wave.name, unmet(&wave.selector, labels[i]).join(", ")))
                    .collect();
                vec![names[i].clone(), why.join("; ")]
            })
            .collect();
        push_branches(&mut out, &rows);
    }

    let excluded: Vec<usize> = (0..clusters.len()).filter(|i| memberships[*i] == Membership::Excluded).collect();
    if !excluded.is_empty() {
        out.push_str("\nNot in this Rollout (spec.clusters does not select them)\n");
        let rows: Vec<Vec<String>> =
            excluded.iter().map(|&i| vec![names[i].clone(), unmet(&plan.clusters, labels[i]).join(", ")]).collect();
        push_branches(&mut out, &rows);
    }

    out.push_str(&blast_radius_text(&radius, shares_stated));

    let mut warnings = report.warnings();
    warnings.extend(radius.problems.iter().cloned());
    if !warnings.is_empty() {
        out.push_str("\nWarnings\n");
        for warning in warnings {
            out.push_str(&format!("- {warning}\n"));
        }
    }
    Ok(out)
}

/// A wave's traffic share, "at least" when some members' shares are unknown.
fn share_text(wave: &WaveTraffic) -> String {
    if wave.unknown.is_empty() {
        format!("traffic share {}%", percent(wave.share))
    } else {
        format!("traffic share at least {}% (unknown for {})", percent(wave.share), wave.unknown.join(", "))
    }
}

/// Each wave's share and the worst case a bad release can reach.
fn blast_radius_text(radius: &BlastRadius, shares_stated: bool) -> String {
    let mut out = format!(
        "
Blast radius (percent of the fleet's traffic: each Cluster's {TRAFFIC_SHARE_LABEL} label, else its measured request rate)
"
    );
    if !shares_stated {
        out.push_str(&format!(
            "└── unknown: no Cluster states its share (label {TRAFFIC_SHARE_LABEL}: \"30\" for 30%) nor publishes a measured request rate (petrel there with --traffic-rate-query)\n"
        ));
        return out;
    }
    let mut rows: Vec<Vec<String>> = radius
        .waves
        .iter()
        .filter(|w| !w.members.is_empty())
        .map(|w| vec![format!("wave {}", w.wave), share_text(w)])
        .collect();
    for (cluster, share) in &radius.shares {
        if let MemberShare::Unknown(why) = share {
            rows.push(vec![cluster.clone(), format!("share unknown: {why}")]);
        }
    }
    if radius.unassigned > 0.0 {
        rows.push(vec!["no wave".into(), format!("traffic share {}% (never released to)", percent(radius.unassigned))]);
    }
    rows.push(vec![
        "worst case".into(),
        match &radius.exposure {
            Ok(exposure) => format!(
                "{}% of the fleet's traffic served by a bad release before the first wave fails ({}); no later wave opens",
                percent(exposure.percent),
                exposure
                    .terms
                    .iter()
                    .map(|(cluster, share, weight)| format!("{cluster} {}% × maxWeight {weight}%", percent(*share)))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ),
            Err(why) => format!("unknown: {why}"),
        },
    ]);
    push_branches(&mut out, &rows);
    out
}

fn push_branches(out: &mut String, rows: &[Vec<String>]) {
    let widths = column_widths(rows);
    for (i, row) in rows.iter().enumerate() {
        out.push_str(if i + 1 == rows.len() { "└── " } else { "├── " });
        out.push_str(&aligned(row, &widths, "  "));
        out.push('\n');
    }
}

fn wave_or_none(wave: Option<&str>) -> String {
    wave.map_or_else(|| "no wave".to_string(), |w| format!("wave {w}"))
}

/// A selector written the way `kubectl get -l` takes it; `everything` when empty.
pub fn selector_text(selector: &ClusterSelector) -> String {
    let mut parts: Vec<String> = selector.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.extend(selector.match_expressions.iter().map(requirement_text));
    if parts.is_empty() { "everything".to_string() } else { parts.join(",") }
}

fn requirement_text(r: &LabelRequirement) -> String {
    match r.operator {
        LabelOperator::In => format!("{} in ({})", r.key, r.values.join(",")),
        LabelOperator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
        LabelOperator::Exists => r.key.clone(),
        LabelOperator::DoesNotExist => format!("!{}", r.key),
    }
}

/// Why a selector matched: the Cluster's labels it looked at.
fn matched_labels(selector: &ClusterSelector, labels: &BTreeMap<String, String>) -> String {
    let keys = selector.match_labels.keys().chain(selector.match_expressions.iter().map(|r| &r.key));
    let mut seen: Vec<String> = Vec::new();
    for key in keys {
        let shown = match labels.get(key) {
            Some(value) => format!("{key}={value}"),
            None => format!("no {key} label"),
        };
        if !seen.contains(&shown) {
            seen.push(shown);
        }
    }
    if seen.is_empty() { "matched by the catch-all selector".to_string() } else { seen.join(",") }
}

/// Why a selector did not match: each requirement the Cluster's labels fail, with the
/// label as it is.
fn unmet(selector: &ClusterSelector, labels: &BTreeMap<String, String>) -> Vec<String> {
    let actual = |key: &str| match labels.get(key) {
        Some(value) => format!("{key} is {value}"),
        None => format!("no {key} label"),
    };
    let mut out: Vec<String> = selector
        .match_labels
        .iter()
        .filter(|(k, v)| labels.get(*k) != Some(*v))
        .map(|(k, v)| format!("needs {k}={v}, {}", actual(k)))
        .collect();
    out.extend(
        selector
            .match_expressions
            .iter()
            .filter(|r| !r.matches(labels))
            .map(|r| format!("needs {}, {}", requirement_text(r), actual(&r.key))),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use petrel_api::rollout::{MemberState, MemberStatus, RolloutStatus};
    use serde_json::json;

    fn now() -> DateTime<Utc> {
        use chrono::TimeZone;
        Utc.with_ymd_and_hms(2026, 12, 5, 12, 0, 0).unwrap()
    }

    fn cluster(name: &str, labels: &[(&str, &str)]) -> Cluster {
        let mut cluster: Cluster = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Cluster",
            "metadata": { "name": name },
            "spec": { "kubeconfigSecretRef": { "name": name, "namespace": "petrel-system" } }
        }))
        .unwrap();
        cluster.labels_mut().extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        cluster
    }

    fn rollout() -> Rollout {
        serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "podinfo", "namespace": "fleet" },
            "spec": {
                "canaryRef": { "namespace": "test", "name": "podinfo" },
                "clusters": { "matchLabels": { "env": "prod" } },
                "waves": [
                    { "name": "canary", "clusterSelector": { "matchLabels": { "role": "canary" } }, "soak": "30m" },
                    { "name": "eu", "approval": "Manual", "maxConcurrency": "50%", "maxFailures": 1,
                      "clusterSelector": { "matchExpressions": [
                        { "key": "region", "operator": "In", "values": ["eu-west", "eu-central"] } ] } },
                    { "name": "us", "clusterSelector": { "matchLabels": { "region": "us" } } }
                ]
            }
        }))
        .unwrap()
    }

    fn fleet() -> Vec<Cluster> {
        vec![
            cluster("eu-2", &[("env", "prod"), ("region", "eu-central")]),
            cluster("canary-1", &[("env", "prod"), ("role", "canary"), ("region", "eu-west")]),
            cluster("eu-1", &[("env", "prod"), ("region", "eu-west")]),
            cluster("asia-1", &[("env", "prod"), ("region", "asia")]),
            cluster("staging-1", &[("env", "staging"), ("region", "eu-west")]),
            cluster("lab", &[]),
        ]
    }

    #[test]
    fn the_plan_says_which_wave_each_cluster_falls_in_and_why() {
        let expected = "\
Plan of Rollout fleet/podinfo over the 6 Cluster(s) on the hub (dry run: nothing is written)
spec.clusters (env=prod) selects 4 of them; each falls in the FIRST wave whose selector matches it

Wave 1/3 canary: Automatic, selector role=canary, 1 cluster(s), 1 at a time, tolerates 0 failure(s), soak 30m
└── canary-1  role=canary; also matches eu (the first matching wave wins)

Wave 2/3 eu: Manual (kubectl petrel approve podinfo eu), selector region in (eu-west,eu-central), 2 cluster(s), 1 at a time, tolerates 1 failure(s)
├── eu-1  region=eu-west
└── eu-2  region=eu-central

Wave 3/3 us: Automatic, selector region=us, 0 cluster(s)
└── no cluster: its selector matches none, or only clusters an earlier wave took

In no wave (selected by spec.clusters, matched by no wave; never released to)
└── asia-1  canary: needs role=canary, no role label; eu: needs region in (eu-west,eu-central), region is asia; us: needs region=us, region is asia

Not in this Rollout (spec.clusters does not select them)
├── lab        needs env=prod, no env label
└── staging-1  needs env=prod, env is staging

Blast radius (percent of the fleet's traffic: each Cluster's petrel.dev/traffic-share label, else its measured request rate)
└── unknown: no Cluster states its share (label petrel.dev/traffic-share: \"30\" for 30%) nor publishes a measured request rate (petrel there with --traffic-rate-query)

Warnings
- wave \"us\" selects no cluster (its selector matches none, or only clusters an earlier wave took)
- 1 cluster(s) selected by the Rollout fall in no wave and will not get the release: asia-1
";
        let text = render_plan(&rollout(), &fleet(), now()).unwrap();
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn a_cluster_whose_wave_changed_since_the_hub_looked_is_pointed_out() {
        let mut r = rollout();
        r.status = Some(RolloutStatus {
            members: vec![MemberStatus {
                cluster: "eu-1".into(),
                wave: None,
                state: MemberState::Unassigned,
                phase: None,
                weight: 0,
                failed_checks: 0,
                release: None,
                revision: None,
                approved_at: None,
                approval_withdrawn_at: None,
                last_contact: None,
                max_weight: None,
                message: String::new(),
            }],
            ..RolloutStatus::default()
        });
        let text = render_plan(&r, &fleet(), now()).unwrap();
        assert!(
            text.contains("├── eu-1  region=eu-west; the hub has it in no wave until its next reconcile\n"),
            "{text}"
        );
    }

    /// The demo's fleet: staging (the canary cluster) 5%, production 30/30/35.
    fn demo_fleet(staging_share: &str) -> (Rollout, Vec<Cluster>) {
        let rollout: Rollout = serde_json::from_value(json!({
            "apiVersion": "petrel.dev/v1alpha1",
            "kind": "Rollout",
            "metadata": { "name": "podinfo", "namespace": "petrel-system" },
            "spec": {
                "canaryRef": { "namespace": "podinfo", "name": "podinfo" },
                "waves": [
                    { "name": "canary", "clusterSelector": { "matchLabels": { "role": "canary" } } },
                    { "name": "production", "clusterSelector": { "matchLabels": { "env": "production" } }, "maxConcurrency": 1 }
                ]
            },
            "status": { "members": [
                { "cluster": "staging-eu-west-1", "wave": "canary", "state": "Succeeded", "maxWeight": 50 },
                { "cluster": "production-eu-west-1", "wave": "production", "state": "Succeeded", "maxWeight": 50 }
            ] }
        }))
        .unwrap();
        let share = |v: &str| (petrel_core::fleet::traffic::TRAFFIC_SHARE_LABEL, v.to_string());
        let clusters = vec![
            cluster("staging-eu-west-1", &[("role", "canary"), (share(staging_share).0, &share(staging_share).1)]),
            cluster("production-eu-west-1", &[("env", "production"), (share("30").0, "30")]),
            cluster("production-us-east-1", &[("env", "production"), (share("30").0, "30")]),
            cluster("production-ap-southeast-1", &[("env", "production"), (share("35").0, "35")]),
        ];
        (rollout, clusters)
    }

    #[test]
    fn the_plan_prints_each_waves_share_and_the_worst_case_of_a_bad_release() {
        let (rollout, clusters) = demo_fleet("5");
        let text = render_plan(&rollout, &clusters, now()).unwrap();
        assert!(
            text.contains("Wave 1/2 canary: Automatic, selector role=canary, 1 cluster(s), 1 at a time, tolerates 0 failure(s), traffic share 5%\n└── staging-eu-west-1  5% (label)  role=canary\n"),
            "{text}"
        );
        assert!(
            text.contains(", traffic share 95%\n├── production-ap-southeast-1  35% (label)  env=production\n"),
            "{text}"
        );
        assert!(
            text.contains("\
Blast radius (percent of the fleet's traffic: each Cluster's petrel.dev/traffic-share label, else its measured request rate)
├── wave canary      traffic share 5%
├── wave production  traffic share 95%
└── worst case       2.5% of the fleet's traffic served by a bad release before the first wave fails (staging-eu-west-1 5% × maxWeight 50%); no later wave opens
"),
            "{text}"
        );
        assert!(!text.contains("Warnings"), "{text}");
    }

    #[test]
    fn an_unreadable_share_is_a_warning_and_no_exposure_is_guessed() {
        let (rollout, clusters) = demo_fleet("five");
        let text = render_plan(&rollout, &clusters, now()).unwrap();
        assert!(text.contains("└── staging-eu-west-1  share unknown  role=canary\n"), "{text}");
        assert!(text.contains("traffic share at least 0% (unknown for staging-eu-west-1)"), "{text}");
        assert!(
            text.contains("└── worst case         unknown: the first wave's share is unknown: staging-eu-west-1: petrel.dev/traffic-share=\"five\" is not a number"),
            "{text}"
        );
        assert!(
            text.contains("- cluster staging-eu-west-1: petrel.dev/traffic-share=\"five\" is not a number"),
            "{text}"
        );
        let (rollout, clusters) = demo_fleet("120");
        let text = render_plan(&rollout, &clusters, now()).unwrap();
        assert!(text.contains("is more than 100 (it is a percentage of the fleet's traffic)"), "{text}");
    }

    /// Sets what the hub copied of a member's measured request rate, `age` seconds old.
    fn measured(cluster: &mut Cluster, rps: f64, age: i64) {
        let rate = petrel_api::cluster_identity::TrafficRate {
            requests_per_second: Some(rps),
            measured_at: Some(now() - chrono::TimeDelta::seconds(age)),
            error: None,
        };
        cluster.status.get_or_insert_default().traffic = Some(rate);
    }

    #[test]
    fn members_without_a_label_are_shared_by_their_measured_rates_and_the_source_is_named() {
        let (rollout, mut clusters) = demo_fleet("5");
        // staging keeps its label; us-east and ap-southeast measure 300 and 350 req/s,
        // eu-west measures too but its label says 30 and wins.
        for c in clusters.iter_mut() {
            let name = c.name_any();
            match name.as_str() {
                "production-us-east-1" | "production-ap-southeast-1" => {
                    c.labels_mut().remove(petrel_core::fleet::traffic::TRAFFIC_SHARE_LABEL);
                    measured(c, if name.contains("us-east") { 300.0 } else { 350.0 }, 30);
                }
                "production-eu-west-1" => measured(c, 5000.0, 30),
                _ => {}
            }
        }
        let text = render_plan(&rollout, &clusters, now()).unwrap();
        assert!(text.contains("└── staging-eu-west-1  5% (label)  role=canary\n"), "{text}");
        assert!(text.contains("production-ap-southeast-1  35% (metric, 350 req/s)  env=production\n"), "{text}");
        assert!(text.contains("production-eu-west-1       30% (label)"), "{text}");
        assert!(text.contains("production-us-east-1       30% (metric, 300 req/s)"), "{text}");
        assert!(text.contains("├── wave production  traffic share 95%\n"), "{text}");
        assert!(text.contains("└── worst case       2.5% of the fleet's traffic"), "{text}");
        assert!(!text.contains("Warnings"), "{text}");

        // Ten minutes on, nobody having measured since: unknown, never the old figure.
        let later = now() + chrono::TimeDelta::minutes(10);
        // Columns widen with the rows; the words are what is checked.
        let squeezed = |t: &str| t.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
        let text = squeezed(&render_plan(&rollout, &clusters, later).unwrap());
        assert!(text.contains("└── production-us-east-1 share unknown env=production\n"), "{text}");
        assert!(
            text.contains(
                "├── production-us-east-1 share unknown: its request rate was measured 10m ago (stale after 5m)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "├── wave production traffic share at least 30% (unknown for production-ap-southeast-1, production-us-east-1)\n"
            ),
            "{text}"
        );
        assert!(text.contains("└── worst case 2.5% of"), "the canary cluster's label still tells: {text}");

        // A canary cluster measured by metric among unknown members: no worst case.
        let (rollout, mut clusters) = demo_fleet("5");
        clusters[0].labels_mut().remove(petrel_core::fleet::traffic::TRAFFIC_SHARE_LABEL);
        measured(&mut clusters[0], 50.0, 30);
        clusters[3].labels_mut().remove(petrel_core::fleet::traffic::TRAFFIC_SHARE_LABEL);
        let text = squeezed(&render_plan(&rollout, &clusters, now()).unwrap());
        assert!(
            text.contains("└── worst case unknown: the first wave's share is unknown: staging-eu-west-1: measured 50 requests/s, but the fleet's total request rate is unknown: no share for production-ap-southeast-1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_clean_plan_has_no_warnings_and_a_catch_all_wave_says_so() {
        let mut r = rollout();
        r.spec.waves.truncate(1);
        r.spec.waves.push(serde_json::from_value(json!({ "name": "rest" })).unwrap());
        let text = render_plan(&r, &fleet(), now()).unwrap();
        assert!(text.contains("Wave 2/2 rest: Automatic, selector everything, 3 cluster(s)"), "{text}");
        assert!(text.contains("├── asia-1  matched by the catch-all selector\n"), "{text}");
        assert!(!text.contains("Warnings"), "{text}");
        assert!(!text.contains("In no wave"), "{text}");
    }

    #[test]
    fn an_unplannable_spec_is_an_error() {
        let mut r = rollout();
        r.spec.waves[1].max_concurrency = Some(petrel_api::common::IntOrString::String("150%".into()));
        let error = render_plan(&r, &fleet(), now()).unwrap_err().to_string();
        assert!(error.contains("maxConcurrency"), "{error}");
    }

    #[test]
    fn selectors_read_like_kubectl_label_selectors() {
        let selector: ClusterSelector = serde_json::from_value(json!({
            "matchLabels": { "env": "prod" },
            "matchExpressions": [
                { "key": "tier", "operator": "NotIn", "values": ["a", "b"] },
                { "key": "gpu", "operator": "Exists" },
                { "key": "legacy", "operator": "DoesNotExist" }
            ]
        }))
        .unwrap();
        assert_eq!(selector_text(&selector), "env=prod,tier notin (a,b),gpu,!legacy");
        assert_eq!(selector_text(&ClusterSelector::default()), "everything");
    }
}
