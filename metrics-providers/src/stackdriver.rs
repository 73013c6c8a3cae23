//! Google Cloud Monitoring (Stackdriver): MQL through the Monitoring API's
//! `projects.timeSeries.query` (`POST /v3/projects/{project}/timeSeries:query`).
//!
//! Configured as Flagger configures it: the template names a Secret whose
//! key `project` is the project id, and, optionally, `serviceAccountKey`, a
//! service account's JSON key. Without a key, petrel asks the GKE metadata
//! server for the token of its own Kubernetes service account (Workload
//! Identity), as Flagger's Google client does; `GCE_METADATA_HOST` overrides
//! the metadata server's address, as in Google's libraries. `address`
//! overrides `https://monitoring.googleapis.com`.
//!
//! A service account key is exchanged for an access token (scope
//! `monitoring.read`) with a JWT signed by the key (RS256, `jsonwebtoken`),
//! posted to the key's `token_uri`. Tokens are kept until a minute before
//! they expire. Both token requests go through the same bounded HTTP client
//! as the queries.
//!
//! The query is MQL, as in Flagger (Google has deprecated MQL in favour of
//! PromQL, but still serves it). The value is the first point of the one
//! time series the query returns; several time series are refused (Flagger
//! takes the first).

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cache::ExpiringCache;
use crate::http::{HttpClient, HttpResponse, address_or, endpoint, parse_address, secret_header, unix_now};
use crate::outbound::EgressPolicy;
use crate::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, quote_body, quote_query};
use crate::secret::Redactor;

/// The Monitoring API.
pub const DEFAULT_ADDRESS: &str = "https://monitoring.googleapis.com";
/// Secret key of the project id.
pub const PROJECT: &str = "project";
/// Secret key of a service account's JSON key.
pub const SERVICE_ACCOUNT_KEY: &str = "serviceAccountKey";
/// The OAuth scope the token asks for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/monitoring.read";
/// Google's token endpoint, for keys that do not name one.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// The GKE/GCE metadata server.
const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";
/// How long before its expiry a cached token is replaced.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// The fields of a service account JSON key petrel uses.
#[derive(Deserialize)]
struct ServiceAccountKey {
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default)]
    token_uri: Option<String>,
}

/// Where access tokens come from.
#[derive(Clone)]
enum TokenSource {
    ServiceAccount {
        email: String,
        key_id: Option<String>,
        signing_key: jsonwebtoken::EncodingKey,
        token_url: reqwest::Url,
    },
    Metadata {
        token_url: reqwest::Url,
    },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ServiceAccount { email, token_url, .. } => {
                f.debug_struct("ServiceAccount").field("email", email).field("token_url", &token_url.as_str()).finish()
            }
            Self::Metadata { token_url } => f.debug_struct("Metadata").field("token_url", &token_url.as_str()).finish(),
        }
    }
}

/// A Cloud Monitoring MQL client.
#[derive(Clone)]
pub struct StackdriverProvider {
    http: HttpClient,
    /// For the token requests, without the template's headers.
    token_http: HttpClient,
    query_url: reqwest::Url,
    tokens: TokenSource,
    /// Identifies the token source in the process-wide token cache without
    /// keeping the key itself there.
    cache_key: [u8; 32],
}

impl StackdriverProvider {
    /// Builds a client from `config`, with the metadata server from the
    /// process environment.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        Self::with_environment(config, |name| std::env::var(name).ok())
    }

    /// Builds a client from `config`, reading environment variables
    /// (`GCE_METADATA_HOST`) through `env`.
    pub fn with_environment(config: &ProviderConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self, QueryError> {
        let secret = config.required_secret()?;
        let project = secret.required(ProviderKind::Stackdriver, PROJECT)?;
        if !project.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | ':' | '.')) {
            return Err(QueryError::InvalidConfig(format!("the Secret's {PROJECT} is not a Google Cloud project id")));
        }
        let base = parse_address(address_or(config, DEFAULT_ADDRESS), false)?;
        let (tokens, identity) = match secret.text(SERVICE_ACCOUNT_KEY)? {
            Some(json) => {
                let key: ServiceAccountKey = serde_json::from_str(&json).map_err(|e| {
                    QueryError::InvalidConfig(format!(
                        "the Secret's {SERVICE_ACCOUNT_KEY} is not a service account JSON key ({})",
                        // Only the category: serde_json's message can quote
                        // the key's content.
                        match e.classify() {
                            serde_json::error::Category::Data => "a field is missing or of the wrong type",
                            _ => "not valid JSON",
                        }
                    ))
                })?;
                let signing_key =
                    jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes()).map_err(|_| {
                        QueryError::InvalidConfig(format!(
                            "the private_key of the Secret's {SERVICE_ACCOUNT_KEY} is not an RSA key in PEM"
                        ))
                    })?;
                let token_url = parse_address(key.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI), false)?;
                let identity = format!("{json}\n{SCOPE}");
                (
                    TokenSource::ServiceAccount {
                        email: key.client_email,
                        key_id: key.private_key_id,
                        signing_key,
                        token_url,
                    },
                    identity,
                )
            }
            None => {
                let host = env("GCE_METADATA_HOST").unwrap_or_else(|| DEFAULT_METADATA_HOST.to_string());
                let token_url = parse_address(
                    &format!("http://{host}/computeMetadata/v1/instance/service-accounts/default/token"),
                    false,
                )?;
                let identity = format!("metadata\n{token_url}");
                (TokenSource::Metadata { token_url }, identity)
            }
        };
        Ok(Self {
            http: HttpClient::new(config)?,
            // A key's token_uri is the template's choice; the metadata server is the
            // environment's, on a link-local address by design.
            token_http: HttpClient::for_credentials(
                config,
                match &tokens {
                    TokenSource::ServiceAccount { .. } => config.egress.clone(),
                    TokenSource::Metadata { .. } => EgressPolicy::unrestricted(),
                },
            )?,
            query_url: endpoint(&base, &format!("/v3/projects/{project}/timeSeries:query")),
            tokens,
            cache_key: Sha256::digest(identity.as_bytes()).into(),
        })
    }

    /// An access token: cached, or fetched now.
    async fn access_token(&self) -> Result<String, QueryError> {
        if let Some(token) = token_cache().get(&self.cache_key) {
            return Ok(token);
        }
        let request = match &self.tokens {
            TokenSource::ServiceAccount { email, key_id, signing_key, token_url } => {
                let now = unix_now()?.as_secs();
                let claims =
                    json!({"iss": email, "scope": SCOPE, "aud": token_url.as_str(), "iat": now, "exp": now + 3600});
                let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
                header.kid = key_id.clone();
                let assertion = jsonwebtoken::encode(&header, &claims, signing_key)
                    .map_err(|e| QueryError::InvalidConfig(format!("cannot sign the token request: {e}")))?;
                self.token_http
                    .request(Method::POST, token_url)
                    .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", &assertion)])
            }
            TokenSource::Metadata { token_url } => self
                .token_http
                .request(Method::GET, token_url)
                .header("Metadata-Flavor", "Google")
                .query(&[("scopes", SCOPE)]),
        };
        let response = self.token_http.send(request).await?;
        let (token, expires_in) = parse_token(&response)?;
        token_cache().put(self.cache_key, token.clone(), expires_in.saturating_sub(TOKEN_MARGIN));
        Ok(token)
    }
}

/// Access tokens by token source.
fn token_cache() -> &'static ExpiringCache<String> {
    static CACHE: OnceLock<ExpiringCache<String>> = OnceLock::new();
    CACHE.get_or_init(ExpiringCache::new)
}

/// Decodes a token answer (`{"access_token": "...", "expires_in": 3599}`);
/// an OAuth error (`{"error": "invalid_grant", "error_description": "..."}`)
/// is quoted, the token never is.
pub(crate) fn parse_token(response: &HttpResponse) -> Result<(String, Duration), QueryError> {
    let parsed: Option<Value> = serde_json::from_str(&response.body).ok();
    if !response.is_success() {
        let detail = parsed.as_ref().and_then(|body| {
            let error = body.get("error")?.as_str()?;
            Some(match body.get("error_description").and_then(Value::as_str) {
                Some(description) => format!("{error}: {description}"),
                None => error.to_string(),
            })
        });
        let error = response.status_error(detail);
        return Err(QueryError::Transport(format!("cannot get a Google access token: {error}")));
    }
    let token = parsed.as_ref().and_then(|body| body.get("access_token")?.as_str()).filter(|t| !t.is_empty());
    let Some(token) = token else {
        return Err(QueryError::BadResponse("the token answer has no access_token".into()));
    };
    let expires_in = parsed.as_ref().and_then(|body| body.get("expires_in")?.as_u64()).unwrap_or(0);
    Ok((token.to_string(), Duration::from_secs(expires_in)))
}

impl MetricProvider for StackdriverProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let token = self.access_token().await?;
        let authorization = secret_header(&format!("Bearer {token}"), "the access token")?;
        let request = self
            .http
            .request(Method::POST, &self.query_url)
            .header(AUTHORIZATION, authorization)
            .json(&json!({"query": query}));
        let mut response = self.http.send(request).await?;
        // The token is no Secret value, but a credential all the same.
        response.body = Redactor::default().with([token.as_str()]).scrub(&response.body);
        let value = parse_response(&response, query);
        tracing::debug!(query, status = response.status, ?value, "cloud monitoring query");
        value
    }
}

/// Google's error body: `{"error": {"code": 400, "message": "...", "status": "INVALID_ARGUMENT"}}`.
fn error_detail(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    let message = parsed.pointer("/error/message")?.as_str()?;
    Some(match parsed.pointer("/error/status").and_then(Value::as_str) {
        Some(status) => format!("{status}: {message}"),
        None => message.to_string(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryResponse {
    #[serde(default)]
    time_series_data: Vec<TimeSeriesData>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeSeriesData {
    #[serde(default)]
    point_data: Vec<PointData>,
}

#[derive(Debug, Deserialize)]
struct PointData {
    #[serde(default)]
    values: Vec<Value>,
}

/// Decodes one `timeSeries:query` answer into the single number it must
/// hold.
pub(crate) fn parse_response(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(error_detail(&response.body)));
    }
    let parsed: QueryResponse = serde_json::from_str(&response.body).map_err(|e| {
        QueryError::BadResponse(format!("not Cloud Monitoring JSON ({e}): {}", quote_body(&response.body)))
    })?;
    let series = match <[TimeSeriesData; 1]>::try_from(parsed.time_series_data) {
        Ok([series]) => series,
        Err(series) if series.is_empty() => return Err(QueryError::NoData { query: quote_query(query) }),
        Err(series) => return Err(QueryError::MultipleSeries { count: series.len(), query: quote_query(query) }),
    };
    let Some(point) = series.point_data.into_iter().next() else {
        return Err(QueryError::NoData { query: quote_query(query) });
    };
    let value = match point.values.as_slice() {
        [] => return Err(QueryError::NoData { query: quote_query(query) }),
        [value] => value,
        values => {
            return Err(QueryError::BadResponse(format!(
                "the query returns {} value columns; return exactly one: {}",
                values.len(),
                quote_query(query)
            )));
        }
    };
    // A TypedValue: doubleValue is a JSON number, int64Value a string.
    let number = value.get("doubleValue").and_then(Value::as_f64).or_else(|| {
        value.get("int64Value").and_then(|v| v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_f64()))
    });
    number
        .ok_or_else(|| QueryError::BadResponse(format!("the value {} is not a number", quote_body(&value.to_string()))))
}

/// Prints no field: several hold values read from the Secret.
impl std::fmt::Debug for StackdriverProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StackdriverProvider(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    #[test]
    fn one_series_is_its_first_point() {
        let body = r#"{"timeSeriesDescriptor":{"labelDescriptors":[],"pointDescriptors":[{"key":"value_response_latencies_percentile","valueType":"DOUBLE","metricKind":"GAUGE"}]},"timeSeriesData":[{"labelValues":[],"pointData":[{"values":[{"doubleValue":87.5}],"timeInterval":{"startTime":"2024-01-01T00:01:00Z","endTime":"2024-01-01T00:01:00Z"}},{"values":[{"doubleValue":90}],"timeInterval":{"endTime":"2024-01-01T00:00:00Z"}}]}]}"#;
        assert_eq!(parse_response(&ok(body), "q"), Ok(87.5));
        let int = r#"{"timeSeriesData":[{"pointData":[{"values":[{"int64Value":"12"}]}]}]}"#;
        assert_eq!(parse_response(&ok(int), "q"), Ok(12.0));
    }

    #[test]
    fn empty_several_and_distributions() {
        assert_eq!(parse_response(&ok("{}"), "q"), Err(QueryError::NoData { query: "q".into() }));
        let two = r#"{"timeSeriesData":[{"pointData":[]},{"pointData":[]}]}"#;
        assert_eq!(parse_response(&ok(two), "q"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
        let dist = r#"{"timeSeriesData":[{"pointData":[{"values":[{"distributionValue":{"count":"3"}}]}]}]}"#;
        assert!(matches!(parse_response(&ok(dist), "q"), Err(QueryError::BadResponse(_))));
    }

    #[test]
    fn errors_are_quoted_and_tokens_never() {
        let error = HttpResponse {
            status: 400,
            retry_after: None,
            body: r#"{"error":{"code":400,"message":"Line 1: Table 'k8s_containr' not found","status":"INVALID_ARGUMENT"}}"#.into(),
        };
        assert_eq!(
            parse_response(&error, "q"),
            Err(QueryError::Http {
                status: 400,
                body: "INVALID_ARGUMENT: Line 1: Table 'k8s_containr' not found".into()
            })
        );
        let token =
            parse_token(&ok(r#"{"access_token":"ya29.secret","expires_in":3599,"token_type":"Bearer"}"#)).unwrap();
        assert_eq!(token, ("ya29.secret".to_string(), Duration::from_secs(3599)));
        let denied = HttpResponse {
            status: 400,
            retry_after: None,
            body: r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#.into(),
        };
        let message = parse_token(&denied).unwrap_err().to_string();
        assert!(message.contains("invalid_grant: Invalid JWT Signature."), "{message}");
    }
}
