//! `AlertProvider`: where a Canary's alerts go.

use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, SecretRef, http_url_rule};

/// A chat or webhook receiver for alerts.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "petrel.dev",
    version = "v1alpha1",
    kind = "AlertProvider",
    namespaced,
    cel,
    status = "AlertProviderStatus",
    shortname = "ap",
    category = "petrel",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct AlertProviderSpec {
    /// Receiver type.
    #[serde(rename = "type")]
    #[schemars(schema_with = "alert_provider_type_schema")]
    pub type_: String,
    /// Channel (Slack). Default `general`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub channel: Option<String>,
    /// Display name of the sender. Default `petrel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub username: Option<String>,
    /// Webhook URL, an absolute http:// or https:// URL; the Secret's `address` key
    /// takes precedence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = http_url_rule("address"))]
    pub address: Option<String>,
    /// HTTP proxy for the receiver, an absolute http:// or https:// URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = http_url_rule("proxy"))]
    pub proxy: Option<String>,
    /// Secret with `address` and optionally `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
}

pub const ALERT_PROVIDER_TYPES: &[&str] = &["slack", "msteams", "discord", "rocket", "gchat", "webhook"];

fn alert_provider_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": ALERT_PROVIDER_TYPES,
        "description": "Receiver type: slack, msteams, discord, rocket, gchat or webhook (generic JSON)."
    })
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AlertProviderStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_proxies_are_http_urls() {
        let provider = |address: &str, proxy: Option<&str>| {
            AlertProvider::new(
                "slack",
                AlertProviderSpec {
                    type_: "slack".into(),
                    address: Some(address.into()),
                    proxy: proxy.map(str::to_string),
                    ..Default::default()
                },
            )
        };
        provider("https://hooks.slack.com/services/T/B/x", Some("http://proxy.internal:3128")).validate_cel().unwrap();
        for (address, proxy, message) in [
            ("hooks.slack.com/services/x", None, "address must be an absolute http:// or https:// URL"),
            ("mailto:team@example.com", None, "address must be an absolute"),
            ("https://hooks.slack.com/x", Some("socks5://127.0.0.1:1080"), "proxy must be an absolute"),
        ] {
            let error = provider(address, proxy).validate_cel().unwrap_err().to_string();
            assert!(error.contains(message), "{address} {proxy:?}: {error}");
        }
    }
}
