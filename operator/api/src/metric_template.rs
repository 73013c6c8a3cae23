//! `MetricTemplate`: a reusable query and the backend that answers it.

use std::collections::BTreeMap;

use kube_derive::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Condition, SecretRef, is_false};

/// A query template and its metric backend. Queries may use the variables
/// `{{ name }}`, `{{ namespace }}`, `{{ target }}`, `{{ service }}`, `{{ ingress }}`,
/// `{{ interval }}` and `{{ variables.<key> }}` (from the Canary metric's `templateVariables`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "petrel.dev",
    version = "v1alpha1",
    kind = "MetricTemplate",
    namespaced,
    cel,
    status = "MetricTemplateStatus",
    shortname = "mt",
    category = "petrel",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider.type"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateSpec {
    pub provider: MetricProviderSpec,
    /// The query, with template variables.
    #[schemars(length(min = 1))]
    pub query: String,
}

/// Where a metric comes from: Flagger's `spec.provider`. Each backend's Secret keys,
/// defaults and query language are in docs/metrics.md.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube_core::Rule::new("self.type != 'externalmetrics'").message("provider type externalmetrics (the Kubernetes external metrics API) is not supported by petrel; query the metric's own backend instead (prometheus, datadog, cloudwatch, ...)"))]
pub struct MetricProviderSpec {
    /// Backend type.
    #[serde(rename = "type")]
    #[schemars(schema_with = "metric_provider_type_schema")]
    pub type_: String,
    /// Base URL of the backend, for example `http://prometheus.monitoring:9090`. Datadog,
    /// New Relic, CloudWatch and stackdriver have a default; keptn needs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Secret with the backend's credentials, in the MetricTemplate's namespace. Its keys
    /// depend on the backend: `token`, or `username` and `password` (prometheus, http,
    /// graphite); `datadog_api_key` and `datadog_application_key`; `newrelic_account_id`
    /// with `newrelic_api_key` or `newrelic_query_key`; `token` and `org` (influxdb);
    /// `aws_access_key_id` and `aws_secret_access_key` (cloudwatch); `project` and
    /// `serviceAccountKey` (stackdriver); `dynatrace_token`; `sf_token_key` (splunk). An
    /// `address` key overrides the address above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretRef>,
    /// Extra HTTP headers sent with each query.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Cloud region (cloudwatch, required there), for example `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Accept any TLS certificate from the backend.
    #[serde(default, skip_serializing_if = "is_false")]
    pub insecure_skip_verify: bool,
}

/// Metric backend types, as Flagger names them. `externalmetrics` is listed so that the
/// API server's answer names it, and then refused by the rule on [`MetricProviderSpec`].
pub const METRIC_PROVIDER_TYPES: &[&str] = &[
    "prometheus",
    "datadog",
    "newrelic",
    "graphite",
    "influxdb",
    "cloudwatch",
    "stackdriver",
    "dynatrace",
    "splunk",
    "keptn",
    "externalmetrics",
    "http",
];

fn metric_provider_type_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "enum": METRIC_PROVIDER_TYPES,
        "description": "Metric backend type."
    })
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricTemplateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn externalmetrics_is_refused_at_admission_and_every_other_type_accepted() {
        for type_ in METRIC_PROVIDER_TYPES {
            let template = MetricTemplate::new(
                "t",
                MetricTemplateSpec {
                    provider: MetricProviderSpec { type_: type_.to_string(), ..Default::default() },
                    query: "q".into(),
                },
            );
            match (*type_, template.validate_cel()) {
                ("externalmetrics", Err(error)) => {
                    assert!(error.to_string().contains("not supported by petrel"), "{error}")
                }
                ("externalmetrics", Ok(())) => panic!("externalmetrics was accepted"),
                (_, result) => assert!(result.is_ok(), "{type_}: {result:?}"),
            }
        }
    }
}
