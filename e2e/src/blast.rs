//! The blast radius of a bad release, measured: how many of the fleet's requests the
//! release answered, from the traffic simulators' own counts (each member's simulator
//! counts every request by the version, the image, that served it). Pure.

use std::collections::BTreeMap;
use std::fmt;

use crate::simulator::AppSnapshot;

/// One member's requests between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRequests {
    pub member: String,
    /// Every request the member's app received.
    pub total: u64,
    /// Of those, answered by the bad release.
    pub bad: u64,
}

/// Requests the bad release answered across the fleet, member by member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlastRadius {
    /// The bad release's image (or a suffix of it, e.g. `podinfo:6.7.2`).
    pub release: String,
    pub members: Vec<MemberRequests>,
}

impl BlastRadius {
    /// The requests between `before` and `after` (each member's app snapshot, by member
    /// name), counting those the versions `release` names answered.
    pub fn between(before: &[(String, AppSnapshot)], after: &[(String, AppSnapshot)], release: &str) -> BlastRadius {
        let members = after
            .iter()
            .map(|(member, now)| {
                let then = before.iter().find(|(m, _)| m == member).map(|(_, s)| s);
                let (total_then, bad_then) =
                    then.map_or((0, 0), |s| (s.total_requests(), s.requests_served_by(release)));
                MemberRequests {
                    member: member.clone(),
                    total: now.total_requests().saturating_sub(total_then),
                    bad: now.requests_served_by(release).saturating_sub(bad_then),
                }
            })
            .collect();
        BlastRadius { release: release.to_string(), members }
    }

    pub fn fleet_total(&self) -> u64 {
        self.members.iter().map(|m| m.total).sum()
    }

    pub fn fleet_bad(&self) -> u64 {
        self.members.iter().map(|m| m.bad).sum()
    }

    /// The fraction (0–1) of the fleet's requests the bad release answered.
    pub fn fraction(&self) -> f64 {
        match self.fleet_total() {
            0 => 0.0,
            total => self.fleet_bad() as f64 / total as f64,
        }
    }

    /// The fraction (0–1) of the fleet's requests the bad release answered when each
    /// member carries `shares[member]` percent of the fleet's traffic, whatever rate its
    /// simulator sent: the sum over members of share × the member's own bad fraction.
    /// `None` when a member has no share.
    pub fn weighted_fraction(&self, shares: &BTreeMap<String, f64>) -> Option<f64> {
        self.members.iter().try_fold(0.0, |sum, m| {
            let share = shares.get(&m.member)? / 100.0;
            let own = if m.total == 0 { 0.0 } else { m.bad as f64 / m.total as f64 };
            Some(sum + share * own)
        })
    }

    /// Requests the bad release answered in `member`.
    pub fn bad_in(&self, member: &str) -> Option<u64> {
        self.members.iter().find(|m| m.member == member).map(|m| m.bad)
    }
}

impl fmt::Display for BlastRadius {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "blast radius of {}: {} of {} fleet requests ({:.3}%) answered by it before the fleet halted",
            self.release,
            self.fleet_bad(),
            self.fleet_total(),
            self.fraction() * 100.0
        )?;
        let width = self.members.iter().map(|m| m.member.len()).max().unwrap_or(0);
        for m in &self.members {
            let share = if m.total == 0 { 0.0 } else { m.bad as f64 * 100.0 / m.total as f64 };
            writeln!(
                f,
                "  {:<width$}  {:>7} requests, {:>6} answered by {} ({share:.2}% of this member's)",
                m.member, m.total, m.bad, self.release
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::{AppCoords, Provider};

    fn snapshot(primary: u64, canary: u64, by_version: &[(&str, u64)]) -> AppSnapshot {
        AppSnapshot {
            coords: AppCoords::new("podinfo", "podinfo", Provider::GatewayApi),
            observation: None,
            primary_requests: (primary, 0),
            canary_requests: (canary, 0),
            unrouted_requests: 0,
            requests_by_version: by_version.iter().map(|(v, n)| (v.to_string(), (*n, 0))).collect::<BTreeMap<_, _>>(),
            observe_failures: 0,
            last_observe_error: None,
        }
    }

    #[test]
    fn the_bad_release_share_is_counted_between_two_snapshots() {
        let before = vec![
            ("canary".to_string(), snapshot(1000, 0, &[("ghcr.io/x/podinfo:6.7.1", 1000)])),
            ("prod".to_string(), snapshot(9000, 0, &[("ghcr.io/x/podinfo:6.7.1", 9000)])),
        ];
        let after = vec![
            (
                "canary".to_string(),
                snapshot(1090, 10, &[("ghcr.io/x/podinfo:6.7.1", 1090), ("ghcr.io/x/podinfo:6.7.2", 10)]),
            ),
            ("prod".to_string(), snapshot(9900, 0, &[("ghcr.io/x/podinfo:6.7.1", 9900)])),
        ];
        let radius = BlastRadius::between(&before, &after, "podinfo:6.7.2");
        assert_eq!((radius.fleet_bad(), radius.fleet_total()), (10, 1000));
        assert_eq!(radius.fraction(), 0.01);
        assert_eq!((radius.bad_in("canary"), radius.bad_in("prod"), radius.bad_in("other")), (Some(10), Some(0), None));
        let text = radius.to_string();
        assert!(text.starts_with("blast radius of podinfo:6.7.2: 10 of 1000 fleet requests (1.000%)"), "{text}");
        assert!(text.contains("\n  prod        900 requests,      0 answered by podinfo:6.7.2 (0.00%"), "{text}");
        assert_eq!(BlastRadius::between(&before, &before, "podinfo:6.7.2").fraction(), 0.0);
        // Weighted by declared shares: 5% of the fleet × 10% of the canary's requests.
        let shares = BTreeMap::from([("canary".to_string(), 5.0), ("prod".to_string(), 95.0)]);
        assert!((radius.weighted_fraction(&shares).unwrap() - 0.005).abs() < 1e-12);
        assert_eq!(radius.weighted_fraction(&BTreeMap::from([("canary".to_string(), 5.0)])), None, "prod has no share");
    }
}
