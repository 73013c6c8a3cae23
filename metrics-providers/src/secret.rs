//! The values of a MetricTemplate's Secret, handed to the backends that read
//! their own keys (Datadog's `datadog_api_key`, New Relic's
//! `newrelic_account_id`, ...), and the scrubbing that keeps those values out
//! of every error message.
//!
//! Nothing read from a Secret may appear in a log line, an Event, a status or
//! an error (DESIGN.md rule 9): [`SecretData`]'s `Debug` prints key names
//! only, its errors name keys and never values, and [`Redactor`] replaces
//! every value of the Secret in the messages a provider returns, in case a
//! vendor echoes a key back in an error body.

use std::collections::BTreeMap;
use std::fmt;

use crate::provider::{ProviderKind, QueryError};

/// What a scrubbed secret value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Shortest value [`Redactor`] replaces: shorter ones (`"1"`, `"us"`) would
/// also match ordinary words and numbers of a message and make it unreadable,
/// and guessing them from a message is no easier than guessing them outright.
const MIN_REDACTED_LEN: usize = 4;

/// A Secret's `data` (with `stringData` merged in), as the operator read it.
///
/// `Debug` prints the key names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData(BTreeMap<String, Vec<u8>>);

impl fmt::Debug for SecretData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl From<BTreeMap<String, Vec<u8>>> for SecretData {
    fn from(values: BTreeMap<String, Vec<u8>>) -> Self {
        Self(values)
    }
}

impl SecretData {
    /// Whether the Secret has `key`.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The text of `key` with surrounding whitespace removed (a Secret made
    /// with `echo` ends in a newline no API key has), or `None` when the key
    /// is absent. A value that is not UTF-8 is an error naming the key.
    pub fn text(&self, key: &str) -> Result<Option<String>, QueryError> {
        self.0
            .get(key)
            .map(|bytes| {
                std::str::from_utf8(bytes)
                    .map(|text| text.trim().to_owned())
                    .map_err(|_| QueryError::InvalidConfig(format!("the Secret's key {key:?} is not UTF-8 text")))
            })
            .transpose()
    }

    /// The text of `key`, which `provider` needs: a missing or empty key is
    /// an error naming the key and the provider (never a value).
    pub fn required(&self, provider: ProviderKind, key: &str) -> Result<String, QueryError> {
        match self.text(key)? {
            Some(text) if !text.is_empty() => Ok(text),
            Some(_) => Err(QueryError::InvalidConfig(format!(
                "the Secret's key {key:?} is empty; the {provider} provider needs it"
            ))),
            None => Err(QueryError::InvalidConfig(format!(
                "the Secret has no key {key:?}; the {provider} provider needs it"
            ))),
        }
    }

    /// Every value, as text, for [`Redactor`].
    fn values(&self) -> impl Iterator<Item = String> + '_ {
        self.0.values().map(|bytes| String::from_utf8_lossy(bytes).trim().to_owned())
    }
}

/// Replaces secret values in error messages with [`REDACTED`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Redactor {
    /// Longest first, so a value containing another is replaced whole.
    values: Vec<String>,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    /// A redactor for every value of `secret` and every `extra` value (e.g.
    /// a password handed over as [`Credentials`](crate::Credentials)).
    pub fn new<'a>(secret: Option<&SecretData>, extra: impl IntoIterator<Item = &'a str>) -> Self {
        Self::from_values(
            secret
                .into_iter()
                .flat_map(SecretData::values)
                .chain(extra.into_iter().map(|value| value.trim().to_owned())),
        )
    }

    /// This redactor, also replacing `extra` values.
    pub fn with<'a>(&self, extra: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values = self.values.clone();
        values.extend(extra.into_iter().map(|value| value.trim().to_owned()));
        Self::from_values(values)
    }

    fn from_values(values: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> =
            values.into_iter().filter(|value| value.chars().count() >= MIN_REDACTED_LEN).collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Self { values }
    }

    /// `text` with every secret value replaced, ignoring ASCII case (a URL's host comes
    /// back lower-cased).
    pub fn scrub(&self, text: &str) -> String {
        self.values.iter().fold(text.to_owned(), |text, value| replace_ignoring_case(&text, value))
    }

    /// `error` with every secret value in its text replaced.
    pub fn scrub_error(&self, error: QueryError) -> QueryError {
        if self.values.is_empty() { error } else { error.map_text(|text| self.scrub(&text)) }
    }
}

/// `text` with every ASCII-case-insensitive occurrence of `value` replaced by [`REDACTED`].
fn replace_ignoring_case(text: &str, value: &str) -> String {
    // ASCII lower-casing keeps every byte offset, so matches found in the lowered copy
    // are char boundaries of the original too.
    let (lowered, needle) = (text.to_ascii_lowercase(), value.to_ascii_lowercase());
    let mut scrubbed = String::with_capacity(text.len());
    let mut rest = 0;
    for (start, _) in lowered.match_indices(&needle) {
        if start >= rest {
            scrubbed.push_str(&text[rest..start]);
            scrubbed.push_str(REDACTED);
            rest = start + needle.len();
        }
    }
    scrubbed.push_str(&text[rest..]);
    scrubbed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(pairs: &[(&str, &str)]) -> SecretData {
        SecretData(pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect())
    }

    #[test]
    fn debug_prints_keys_only() {
        let shown = format!("{:?}", secret(&[("datadog_api_key", "s3cr3t-value")]));
        assert_eq!(shown, "{\"datadog_api_key\"}");
    }

    #[test]
    fn required_keys_are_trimmed_and_named_when_missing() {
        let data = secret(&[("token", "abc\n"), ("empty", " "), ("bad", "x")]);
        assert_eq!(data.required(ProviderKind::Dynatrace, "token"), Ok("abc".into()));
        let missing = data.required(ProviderKind::Dynatrace, "dynatrace_token").unwrap_err().to_string();
        assert!(missing.contains("\"dynatrace_token\"") && missing.contains("dynatrace"), "{missing}");
        let empty = data.required(ProviderKind::Dynatrace, "empty").unwrap_err().to_string();
        assert!(empty.contains("empty"), "{empty}");
        let mut binary = data.clone();
        binary.0.insert("bin".into(), vec![0xff, 0x00]);
        assert!(binary.text("bin").unwrap_err().to_string().contains("\"bin\""));
    }

    #[test]
    fn redactor_replaces_every_value_longest_first() {
        let data = secret(&[("a", "topsecret"), ("b", "topsecret-and-more"), ("short", "abc")]);
        let redactor = Redactor::new(Some(&data), ["hunter22"]);
        assert_eq!(
            redactor.scrub("key topsecret-and-more, then topsecret, hunter22, abc"),
            "key <redacted>, then <redacted>, <redacted>, abc"
        );
        assert_eq!(
            redactor.scrub("http://TopSecret:1 and héllo topsecret"),
            "http://<redacted>:1 and héllo <redacted>"
        );
        let error = redactor.scrub_error(QueryError::Http { status: 403, body: "bad key topsecret".into() });
        assert_eq!(error, QueryError::Http { status: 403, body: "bad key <redacted>".into() });
    }
}
