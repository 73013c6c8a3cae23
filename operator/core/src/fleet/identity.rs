//! Member identity: what a member says it is, checked against what the hub was told.
//!
//! Pure. The member side turns the platform team's identity ConfigMap into the labels
//! of its `ClusterIdentity` ([`stated_labels`]); the hub compares what a member states
//! (and the UID of its kube-system Namespace) with the `Cluster` object that reaches it
//! and the UID pinned on first contact ([`verify_identity`]). A member is approved only
//! when the verdict is [`IdentityVerdict::Verified`]; nothing is ever approved on a guess.

use std::collections::BTreeMap;

use petrel_api::cluster_identity::ClusterIdentitySpec;

/// Most labels an identity ConfigMap may state.
pub const MAX_IDENTITY_LABELS: usize = 32;
/// Longest label value (Kubernetes' own limit).
const MAX_LABEL_VALUE: usize = 63;
/// Longest label name part (Kubernetes' own limit).
const MAX_LABEL_NAME: usize = 63;
/// Longest label key prefix (a DNS subdomain).
const MAX_LABEL_PREFIX: usize = 253;
/// Longest text of a problem quoted back (a hostile ConfigMap can hold 1 MiB values).
const MAX_QUOTED: usize = 40;

/// The labels of an identity ConfigMap's data, and what was wrong with the rest.
/// Every data key is a label key; an entry that is not a valid label is left out and
/// named in the problems (shortened, so a huge key or value is not copied around).
pub fn stated_labels(data: &BTreeMap<String, String>) -> (BTreeMap<String, String>, Vec<String>) {
    let mut labels = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, value) in data {
        if let Err(why) = check_label_key(key) {
            problems.push(format!("key {:?} is not a label key ({why})", shorten(key)));
        } else if let Err(why) = check_label_value(value) {
            problems.push(format!("value of {key:?} is not a label value ({why})"));
        } else if labels.len() == MAX_IDENTITY_LABELS {
            problems.push(format!("more than {MAX_IDENTITY_LABELS} labels; {key:?} and later keys are left out"));
            break;
        } else {
            labels.insert(key.clone(), value.clone());
        }
    }
    (labels, problems)
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(MAX_QUOTED) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// A label name or value segment: alphanumeric at both ends, `-_.` inside.
fn check_segment(text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!("{} characters, at most {max}", text.len()));
    }
    if !text.chars().all(is_label_char) {
        return Err("only letters, digits, '-', '_' and '.'".into());
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(text.chars().next()) || !alnum(text.chars().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if name.is_empty() {
        return Err("empty name".into());
    }
    check_segment(name, MAX_LABEL_NAME)?;
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= MAX_LABEL_PREFIX
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid {
            return Err("the prefix must be a DNS subdomain".into());
        }
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() { Ok(()) } else { check_segment(value, MAX_LABEL_VALUE) }
}

/// What a probe of the member found out about who it is, through one kubeconfig.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedIdentity {
    /// Fingerprint of the kubeconfig the probe used: an identity checked through one
    /// kubeconfig says nothing about where a replaced one leads.
    pub kubeconfig: String,
    /// UID of the member's kube-system Namespace, or why it could not be read.
    pub kube_system_uid: Result<String, String>,
    /// The member's `ClusterIdentity`, `Ok(None)` when it publishes none (an older
    /// petrel, or petrel not running there), or why it could not be read.
    pub stated: Result<Option<ClusterIdentitySpec>, String>,
}

/// What the hub concludes about a member's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentityVerdict {
    /// What the member states matches its Cluster and the pinned UID.
    Verified,
    /// The member is not who its Cluster says: the differing keys, one message each.
    Mismatch(Vec<String>),
    /// Nothing to compare yet or any more (no probe through this kubeconfig, no
    /// identity published, an unreadable answer): never a pass.
    Unverified(String),
}

impl IdentityVerdict {
    pub fn is_verified(&self) -> bool {
        matches!(self, IdentityVerdict::Verified)
    }

    /// One line for a status message or an Event.
    pub fn describe(&self) -> String {
        match self {
            IdentityVerdict::Verified => "identity verified".into(),
            IdentityVerdict::Mismatch(keys) => format!("identity mismatch: {}", keys.join("; ")),
            IdentityVerdict::Unverified(why) => format!("identity not verified: {why}"),
        }
    }
}

/// The Cluster object as the hub holds it: what the member is supposed to be.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedIdentity<'a> {
    pub cluster: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    /// The kube-system UID pinned in the Cluster's status on first contact.
    pub pinned_uid: Option<&'a str>,
    /// Fingerprint of the kubeconfig the hub uses for the member now.
    pub kubeconfig: &'a str,
}

/// Compares what a member states with what its Cluster says. `observed` is the last
/// probe's finding; it counts only when it was made through the kubeconfig in use.
pub fn verify_identity(expected: ExpectedIdentity<'_>, observed: Option<&ObservedIdentity>) -> IdentityVerdict {
    let Some(observed) = observed.filter(|o| o.kubeconfig == expected.kubeconfig) else {
        return IdentityVerdict::Unverified(
            "the hub has not checked this member through its current kubeconfig yet".into(),
        );
    };
    let uid = match &observed.kube_system_uid {
        Ok(uid) => uid,
        Err(why) => {
            return IdentityVerdict::Unverified(format!("cannot read the member's kube-system Namespace: {why}"));
        }
    };
    let stated = match &observed.stated {
        Ok(Some(stated)) => stated,
        Ok(None) => {
            return IdentityVerdict::Unverified(
                "the member publishes no ClusterIdentity (petrel in member mode publishes one: is an older petrel running there, or none?)".into(),
            );
        }
        Err(why) => return IdentityVerdict::Unverified(format!("cannot read the member's ClusterIdentity: {why}")),
    };
    let Some(pinned) = expected.pinned_uid else {
        return IdentityVerdict::Unverified("no kube-system UID is pinned for this Cluster yet".into());
    };
    let mut mismatches = Vec::new();
    if uid != pinned {
        mismatches.push(format!(
            "kube-system UID is {uid}, pinned {pinned} (another cluster, or this one was rebuilt: `kubectl petrel repin {}`)",
            expected.cluster
        ));
    }
    if &stated.kube_system_uid != uid {
        mismatches.push(format!(
            "the ClusterIdentity states kube-system UID {}, the member's kube-system Namespace has {uid}",
            shorten(&stated.kube_system_uid)
        ));
    }
    if stated.cluster_name != expected.cluster {
        mismatches.push(format!(
            "name: the member says {:?}, the Cluster is {:?}",
            shorten(&stated.cluster_name),
            expected.cluster
        ));
    }
    for (key, stated_value) in &stated.labels {
        if let Some(value) = expected.labels.get(key)
            && value != stated_value
        {
            mismatches.push(format!("{key}: the member says {stated_value:?}, the Cluster says {value:?}"));
        }
    }
    if !stated.problems.is_empty() {
        mismatches.push(format!("the member's identity ConfigMap has problems: {}", stated.problems.join(", ")));
    }
    if mismatches.is_empty() { IdentityVerdict::Verified } else { IdentityVerdict::Mismatch(mismatches) }
}

/// The kube-system UID to pin after a probe that read `observed_uid`: the first one
/// ever seen, or the one a person asked to re-pin (`kubectl petrel repin`) when it is
/// what the member has now. A re-pin request for another UID (the cluster changed
/// again since) is ignored.
pub fn pin_after_probe<'a>(
    pinned: Option<&'a str>,
    observed_uid: Option<&'a str>,
    repin_request: Option<&'a str>,
) -> Option<&'a str> {
    match (pinned, observed_uid) {
        (None, observed) => observed,
        (Some(_), Some(observed)) if repin_request == Some(observed) => Some(observed),
        (pinned, _) => pinned,
    }
}

/// Cluster names that reach the same kube-system UID, grouped; each group has two or
/// more names. A fleet in which two Clusters are one cluster cannot be rolled out.
pub fn shared_uids<'a>(observed: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<(String, Vec<String>)> {
    let mut by_uid: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (cluster, uid) in observed {
        by_uid.entry(uid).or_default().push(cluster.to_string());
    }
    by_uid
        .into_iter()
        .filter(|(_, names)| names.len() > 1)
        .map(|(uid, mut names)| {
            names.sort();
            (uid.to_string(), names)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn stated(name: &str, uid: &str, pairs: &[(&str, &str)]) -> ClusterIdentitySpec {
        ClusterIdentitySpec {
            cluster_name: name.into(),
            labels: labels(pairs),
            kube_system_uid: uid.into(),
            ..Default::default()
        }
    }

    fn observed(uid: &str, identity: ClusterIdentitySpec) -> ObservedIdentity {
        ObservedIdentity { kubeconfig: "k1".into(), kube_system_uid: Ok(uid.into()), stated: Ok(Some(identity)) }
    }

    fn expected<'a>(labels: &'a BTreeMap<String, String>, pinned: Option<&'a str>) -> ExpectedIdentity<'a> {
        ExpectedIdentity { cluster: "prod-eu", labels, pinned_uid: pinned, kubeconfig: "k1" }
    }

    #[test]
    fn a_member_that_states_what_its_cluster_says_is_verified() {
        let cluster = labels(&[("env", "production"), ("region", "eu-west"), ("role", "canary")]);
        // The member need not state every label the hub groups it by (role).
        let member = observed("u1", stated("prod-eu", "u1", &[("env", "production"), ("region", "eu-west")]));
        assert_eq!(verify_identity(expected(&cluster, Some("u1")), Some(&member)), IdentityVerdict::Verified);
    }

    #[test]
    fn a_differing_label_is_a_mismatch_that_names_the_key() {
        let cluster = labels(&[("region", "eu-west")]);
        let member = observed("u1", stated("prod-eu", "u1", &[("region", "us-east")]));
        let verdict = verify_identity(expected(&cluster, Some("u1")), Some(&member));
        let IdentityVerdict::Mismatch(keys) = &verdict else { panic!("{verdict:?}") };
        assert_eq!(keys.len(), 1);
        assert!(
            keys[0].starts_with("region:") && keys[0].contains("us-east") && keys[0].contains("eu-west"),
            "{keys:?}"
        );
    }

    #[test]
    fn another_kube_system_uid_or_name_is_a_mismatch() {
        let cluster = labels(&[]);
        let member = observed("u2", stated("prod-us", "u2", &[]));
        let IdentityVerdict::Mismatch(keys) = verify_identity(expected(&cluster, Some("u1")), Some(&member)) else {
            panic!()
        };
        assert!(
            keys.iter().any(|k| k.contains("kube-system UID is u2, pinned u1") && k.contains("repin prod-eu")),
            "{keys:?}"
        );
        assert!(keys.iter().any(|k| k.starts_with("name:")), "{keys:?}");
    }

    #[test]
    fn a_stated_uid_that_is_not_the_members_own_is_a_mismatch() {
        let cluster = labels(&[]);
        let member = observed("u1", stated("prod-eu", "u9", &[]));
        assert!(matches!(
            verify_identity(expected(&cluster, Some("u1")), Some(&member)),
            IdentityVerdict::Mismatch(keys) if keys.iter().any(|k| k.contains("states kube-system UID u9"))
        ));
    }

    #[test]
    fn nothing_to_compare_is_never_verified() {
        let cluster = labels(&[]);
        let member = observed("u1", stated("prod-eu", "u1", &[]));
        let unverified = |e: ExpectedIdentity<'_>, o: Option<&ObservedIdentity>| {
            matches!(verify_identity(e, o), IdentityVerdict::Unverified(_))
        };
        assert!(unverified(expected(&cluster, Some("u1")), None), "no probe yet");
        assert!(unverified(expected(&cluster, None), Some(&member)), "nothing pinned");
        let other_kubeconfig = ExpectedIdentity { kubeconfig: "k2", ..expected(&cluster, Some("u1")) };
        assert!(unverified(other_kubeconfig, Some(&member)), "checked through a kubeconfig no longer used");
        let old_petrel = ObservedIdentity { stated: Ok(None), ..member.clone() };
        assert!(unverified(expected(&cluster, Some("u1")), Some(&old_petrel)), "no identity published");
        let forbidden = ObservedIdentity { kube_system_uid: Err("forbidden".into()), ..member.clone() };
        assert!(unverified(expected(&cluster, Some("u1")), Some(&forbidden)));
    }

    #[test]
    fn a_config_map_with_problems_never_verifies() {
        let cluster = labels(&[]);
        let mut identity = stated("prod-eu", "u1", &[]);
        identity.problems = vec!["key \"a b\" is not a label key".into()];
        assert!(matches!(
            verify_identity(expected(&cluster, Some("u1")), Some(&observed("u1", identity))),
            IdentityVerdict::Mismatch(_)
        ));
    }

    #[test]
    fn config_map_entries_that_are_not_labels_are_named_and_left_out() {
        let huge = "x".repeat(100_000);
        let data = labels(&[
            ("env", "production"),
            ("topology.kubernetes.io/region", "eu-west-1"),
            ("a b", "c"),
            ("zone", &huge),
            ("Bad.Prefix/x", "y"),
            ("empty", ""),
        ]);
        let (good, problems) = stated_labels(&data);
        assert_eq!(
            good,
            labels(&[("env", "production"), ("topology.kubernetes.io/region", "eu-west-1"), ("empty", "")])
        );
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().all(|p| p.len() < 200), "problems do not copy huge values: {problems:?}");
        let many: BTreeMap<String, String> = (0..40).map(|i| (format!("k{i:02}"), "v".to_string())).collect();
        let (good, problems) = stated_labels(&many);
        assert_eq!((good.len(), problems.len()), (MAX_IDENTITY_LABELS, 1));
    }

    #[test]
    fn the_first_uid_is_pinned_and_only_an_explicit_request_repins() {
        assert_eq!(pin_after_probe(None, Some("u1"), None), Some("u1"));
        assert_eq!(
            pin_after_probe(Some("u1"), Some("u2"), None),
            Some("u1"),
            "a changed cluster is not re-pinned by itself"
        );
        assert_eq!(pin_after_probe(Some("u1"), Some("u2"), Some("u2")), Some("u2"), "re-pinned on request");
        assert_eq!(
            pin_after_probe(Some("u1"), Some("u3"), Some("u2")),
            Some("u1"),
            "a request for another UID does nothing"
        );
        assert_eq!(pin_after_probe(Some("u1"), None, Some("u2")), Some("u1"));
        assert_eq!(pin_after_probe(None, None, None), None);
    }

    #[test]
    fn clusters_sharing_a_uid_are_grouped() {
        let groups = shared_uids([("a", "u1"), ("b", "u2"), ("c", "u1"), ("d", "u3")]);
        assert_eq!(groups, vec![("u1".to_string(), vec!["a".to_string(), "c".to_string()])]);
    }
}
