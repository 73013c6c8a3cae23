//! Imperative verbs on a Canary (`kubectl petrel abort|promote|retry`), carried as
//! annotations so each one is a single patch a person could also type with `kubectl
//! annotate`.
//!
//! A request names the revision it is about (`status.lastAppliedSpec` when it was made),
//! so a request left on the object never applies to a later revision. The value is
//! `<revision>` or `<revision>@<request id>`: the optional request id makes a second
//! request for the same revision (a second retry after another failure) a new value the
//! controller can tell apart from the one it already handled.

use std::collections::BTreeMap;

/// Roll the named revision back now, as if its analysis had failed.
pub const ABORT_ANNOTATION: &str = "petrel.dev/abort";
/// Promote the named revision now, skipping the remaining analysis steps.
pub const PROMOTE_ANNOTATION: &str = "petrel.dev/promote";
/// Run the analysis of the named revision again after it failed.
pub const RETRY_ANNOTATION: &str = "petrel.dev/retry";

/// Separates the revision from the request id in a verb annotation's value.
pub const REQUEST_ID_SEPARATOR: char = '@';

/// The verbs petrel carries as annotations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verb {
    Abort,
    Promote,
    Retry,
}

impl Verb {
    pub const ALL: [Verb; 3] = [Verb::Abort, Verb::Promote, Verb::Retry];

    pub fn annotation(self) -> &'static str {
        match self {
            Verb::Abort => ABORT_ANNOTATION,
            Verb::Promote => PROMOTE_ANNOTATION,
            Verb::Retry => RETRY_ANNOTATION,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Abort => "abort",
            Verb::Promote => "promote",
            Verb::Retry => "retry",
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verb request read from an annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerbRequest {
    pub verb: Verb,
    /// The revision the request is about.
    pub revision: String,
    /// The annotation's whole value: what the controller records once it handled the
    /// request, so the same request is never acted on twice.
    pub value: String,
}

impl VerbRequest {
    /// Parses an annotation value; `None` when it names no revision.
    pub fn parse(verb: Verb, value: &str) -> Option<VerbRequest> {
        let revision = value.split(REQUEST_ID_SEPARATOR).next().unwrap_or_default().trim();
        if revision.is_empty() {
            return None;
        }
        Some(VerbRequest { verb, revision: revision.to_string(), value: value.to_string() })
    }

    /// The annotation value of a request for `revision`, with a request id.
    pub fn value_for(revision: &str, request_id: &str) -> String {
        format!("{revision}{REQUEST_ID_SEPARATOR}{request_id}")
    }

    /// Whether this request is about `revision`.
    pub fn is_for(&self, revision: &str) -> bool {
        self.revision == revision
    }
}

/// Every verb request present on an object's annotations, in [`Verb::ALL`] order.
pub fn verb_requests(annotations: &BTreeMap<String, String>) -> Vec<VerbRequest> {
    Verb::ALL
        .iter()
        .filter_map(|verb| annotations.get(verb.annotation()).and_then(|v| VerbRequest::parse(*verb, v)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_names_a_revision_and_an_optional_request_id() {
        let plain = VerbRequest::parse(Verb::Abort, "6f7d9c").unwrap();
        assert_eq!(plain.revision, "6f7d9c");
        assert_eq!(plain.value, "6f7d9c");
        let with_id = VerbRequest::parse(Verb::Retry, "6f7d9c@20261122T023000Z").unwrap();
        assert_eq!(with_id.revision, "6f7d9c");
        assert_eq!(with_id.value, "6f7d9c@20261122T023000Z");
        assert!(with_id.is_for("6f7d9c"));
        assert!(!with_id.is_for("1a2b3c"));
    }

    #[test]
    fn a_value_without_a_revision_is_no_request() {
        assert_eq!(VerbRequest::parse(Verb::Promote, ""), None);
        assert_eq!(VerbRequest::parse(Verb::Promote, "@later"), None);
        assert_eq!(VerbRequest::parse(Verb::Promote, "  "), None);
    }

    #[test]
    fn value_for_round_trips_through_parse() {
        let value = VerbRequest::value_for("abc", "1");
        assert_eq!(value, "abc@1");
        assert_eq!(VerbRequest::parse(Verb::Abort, &value).unwrap().revision, "abc");
    }

    #[test]
    fn requests_are_read_from_the_verb_annotations_only() {
        let annotations = BTreeMap::from([
            (RETRY_ANNOTATION.to_string(), "r1@x".to_string()),
            (ABORT_ANNOTATION.to_string(), "r1".to_string()),
            ("petrel.dev/approved-revision".to_string(), "r1".to_string()),
            (PROMOTE_ANNOTATION.to_string(), "".to_string()),
        ]);
        let verbs: Vec<Verb> = verb_requests(&annotations).iter().map(|r| r.verb).collect();
        assert_eq!(verbs, vec![Verb::Abort, Verb::Retry]);
    }
}
