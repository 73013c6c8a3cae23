//! Amazon CloudWatch: `GetMetricData`, sent the way CloudWatch's API
//! reference documents for clients without an SDK (`POST /` with
//! `X-Amz-Target: GraniteServiceVersion20100801.GetMetricData` and a JSON
//! body), signed with AWS Signature Version 4 by the `aws-sigv4` crate.
//!
//! Configured as Flagger configures it: `spec.provider.region` (required),
//! and the query is a JSON list of `MetricDataQuery` objects (`Id`,
//! `Expression`, `MetricStat`, `ReturnData`, ... as the API spells them),
//! evaluated over the 10 metric intervals before now. `address` overrides
//! the regional endpoint `https://monitoring.<region>.amazonaws.com`.
//!
//! Credentials, in order:
//! 1. the template's Secret, keys `aws_access_key_id`,
//!    `aws_secret_access_key` and optionally `aws_session_token` (Flagger
//!    has no Secret for CloudWatch; these are the names of the AWS
//!    credentials file);
//! 2. the operator's environment, as the AWS SDKs read it:
//!    `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`; IRSA
//!    (`AWS_WEB_IDENTITY_TOKEN_FILE` and `AWS_ROLE_ARN`, exchanged with STS
//!    `AssumeRoleWithWebIdentity`; `AWS_ENDPOINT_URL_STS` overrides STS's
//!    address); EKS Pod Identity or ECS task roles
//!    (`AWS_CONTAINER_CREDENTIALS_FULL_URI` or `..._RELATIVE_URI`, with
//!    `AWS_CONTAINER_AUTHORIZATION_TOKEN(_FILE)`).
//!
//! EC2 instance profiles (IMDS) and shared config files are not read: a pod
//! should not borrow its node's role. Role credentials are kept for ten
//! minutes (AWS issues them for at least fifteen).
//!
//! The whole AWS SDK is not used: `aws-config` brings the STS, SSO and
//! SSO-OIDC clients and their runtime, several minutes of build on this
//! project's machines for the two small requests above.
//!
//! The value is the newest value of the one result the queries return
//! (`ReturnData: false` hides the intermediate ones); several returned
//! results are refused (Flagger takes the first).

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::cache::ExpiringCache;
use crate::http::{HttpClient, HttpResponse, build, parse_address, secret_header, unix_now};
use crate::outbound::EgressPolicy;
use crate::provider::{MetricProvider, ProviderConfig, ProviderKind, QueryError, quote_body, quote_query};
use crate::secret::Redactor;

/// Secret key of the access key id.
pub const ACCESS_KEY_ID: &str = "aws_access_key_id";
/// Secret key of the secret access key.
pub const SECRET_ACCESS_KEY: &str = "aws_secret_access_key";
/// Secret key of an optional session token.
pub const SESSION_TOKEN: &str = "aws_session_token";
/// The operation, as CloudWatch's API reference spells the header.
const TARGET: &str = "GraniteServiceVersion20100801.GetMetricData";
/// How many metric intervals the query window spans, as in Flagger.
const WINDOW_INTERVALS: u32 = 10;
/// How long role credentials are reused.
const ROLE_CREDENTIALS_TTL: Duration = Duration::from_secs(600);
/// Largest web identity or authorization token file read.
const MAX_TOKEN_FILE: u64 = 64 * 1024;

/// The regions of the `aws`, `aws-cn` and `aws-us-gov` partitions.
pub const KNOWN_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
];

/// Where the signing credentials come from.
#[derive(Clone)]
enum CredentialSource {
    Static(Credentials),
    WebIdentity { token_file: String, role_arn: String, session_name: String, sts_url: reqwest::Url },
    Container { url: reqwest::Url, token: Option<String>, token_file: Option<String> },
}

impl std::fmt::Debug for CredentialSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Static(_) => f.write_str("Static(<redacted>)"),
            Self::WebIdentity { role_arn, .. } => f.debug_struct("WebIdentity").field("role_arn", role_arn).finish(),
            Self::Container { url, .. } => f.debug_struct("Container").field("url", &url.as_str()).finish(),
        }
    }
}

/// A CloudWatch `GetMetricData` client.
#[derive(Clone)]
pub struct CloudWatchProvider {
    http: HttpClient,
    /// For STS and container credentials, without the template's headers.
    credentials_http: HttpClient,
    url: reqwest::Url,
    region: String,
    source: CredentialSource,
    /// Secret values from the environment, kept out of messages.
    redactor: Redactor,
    window: Duration,
}

/// The `monitoring` endpoint of `region`.
fn regional_endpoint(service: &str, region: &str) -> String {
    let suffix = if region.starts_with("cn-") { "amazonaws.com.cn" } else { "amazonaws.com" };
    format!("https://{service}.{region}.{suffix}")
}

/// A region name: known, or (with an explicit `address`) at least shaped
/// like one, e.g. a region newer than this list.
fn check_region(region: Option<&str>, has_address: bool) -> Result<String, QueryError> {
    let region = region.map(str::trim).filter(|r| !r.is_empty()).ok_or_else(|| {
        QueryError::InvalidConfig("the cloudwatch provider needs spec.provider.region, e.g. us-east-1".into())
    })?;
    let shaped = {
        let parts: Vec<&str> = region.split('-').collect();
        parts.len() >= 3
            && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
            && parts.last().is_some_and(|p| p.chars().all(|c| c.is_ascii_digit()))
    };
    if KNOWN_REGIONS.contains(&region) || (has_address && shaped) {
        Ok(region.to_string())
    } else {
        Err(QueryError::InvalidConfig(format!(
            "unknown AWS region {region:?} in spec.provider.region (a region newer than petrel also needs spec.provider.address, its monitoring endpoint)"
        )))
    }
}

impl CloudWatchProvider {
    /// Builds a client from `config`, with credentials from its Secret or
    /// the process environment.
    pub fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        Self::with_environment(config, |name| std::env::var(name).ok())
    }

    /// Builds a client from `config`, reading environment variables through
    /// `env` (tests and embedders pass their own).
    pub fn with_environment(config: &ProviderConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self, QueryError> {
        let has_address = !config.address.trim().is_empty();
        let region = check_region(config.region.as_deref(), has_address)?;
        let address = if has_address { config.address.clone() } else { regional_endpoint("monitoring", &region) };
        let url = parse_address(&address, false)?;
        let env = |name: &str| env(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        let mut env_secrets = Vec::new();
        let source = if let Some(secret) = &config.secret {
            let id = secret.required(ProviderKind::CloudWatch, ACCESS_KEY_ID)?;
            let key = secret.required(ProviderKind::CloudWatch, SECRET_ACCESS_KEY)?;
            let token = secret.text(SESSION_TOKEN)?.filter(|t| !t.is_empty());
            CredentialSource::Static(Credentials::new(id, key, token, None, "petrel-secret"))
        } else if let (Some(id), Some(key)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            let token = env("AWS_SESSION_TOKEN");
            env_secrets.push(key.clone());
            env_secrets.extend(token.clone());
            CredentialSource::Static(Credentials::new(id, key, token, None, "petrel-environment"))
        } else if let (Some(token_file), Some(role_arn)) = (env("AWS_WEB_IDENTITY_TOKEN_FILE"), env("AWS_ROLE_ARN")) {
            let sts = env("AWS_ENDPOINT_URL_STS")
                .or_else(|| env("AWS_ENDPOINT_URL"))
                .unwrap_or_else(|| regional_endpoint("sts", &region));
            CredentialSource::WebIdentity {
                token_file,
                role_arn,
                session_name: env("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| "petrel".to_string()),
                sts_url: parse_address(&sts, false)?,
            }
        } else if let Some(full) = env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
            .or_else(|| env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").map(|path| format!("http://169.254.170.2{path}")))
        {
            let token = env("AWS_CONTAINER_AUTHORIZATION_TOKEN");
            env_secrets.extend(token.clone());
            CredentialSource::Container {
                url: parse_address(&full, false)?,
                token,
                token_file: env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            }
        } else {
            return Err(QueryError::InvalidConfig(format!(
                "no AWS credentials: give the template a Secret with keys {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}, or run the operator with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, IRSA (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN) or EKS Pod Identity"
            )));
        };
        Ok(Self {
            http: HttpClient::new(config)?.redacting(env_secrets.iter().map(String::as_str)),
            credentials_http: HttpClient::for_credentials(config, EgressPolicy::unrestricted())?
                .redacting(env_secrets.iter().map(String::as_str)),
            url,
            region,
            source,
            redactor: Redactor::new(None, env_secrets.iter().map(String::as_str)),
            window: config.interval.saturating_mul(WINDOW_INTERVALS),
        })
    }

    /// The credentials to sign with: static, cached, or fetched now.
    async fn credentials(&self) -> Result<Credentials, QueryError> {
        let (request, cache_key) = match &self.source {
            CredentialSource::Static(credentials) => return Ok(credentials.clone()),
            CredentialSource::WebIdentity { token_file, role_arn, session_name, sts_url } => {
                let token = read_token_file(token_file).await?;
                let key = Sha256::digest(format!("web-identity\n{sts_url}\n{role_arn}\n{token}").as_bytes()).into();
                let request = self.credentials_http.request(Method::POST, sts_url).form(&[
                    ("Action", "AssumeRoleWithWebIdentity"),
                    ("Version", "2011-06-15"),
                    ("RoleArn", role_arn.as_str()),
                    ("RoleSessionName", session_name.as_str()),
                    ("WebIdentityToken", token.as_str()),
                ]);
                (request, key)
            }
            CredentialSource::Container { url, token, token_file } => {
                let token = match token_file {
                    Some(file) => Some(read_token_file(file).await?),
                    None => token.clone(),
                };
                let key =
                    Sha256::digest(format!("container\n{url}\n{}", token.as_deref().unwrap_or_default()).as_bytes())
                        .into();
                let mut request = self.credentials_http.request(Method::GET, url);
                if let Some(token) = token {
                    request =
                        request.header(AUTHORIZATION, secret_header(&token, "the container authorization token")?);
                }
                (request, key)
            }
        };
        if let Some(credentials) = role_cache().get(&cache_key) {
            return Ok(credentials);
        }
        let response = self.credentials_http.send(request).await?;
        let credentials = match self.source {
            CredentialSource::WebIdentity { .. } => parse_sts_credentials(&response)?,
            _ => parse_container_credentials(&response)?,
        };
        role_cache().put(cache_key, credentials.clone(), ROLE_CREDENTIALS_TTL);
        Ok(credentials)
    }

    /// Signs and sends one `GetMetricData` request with `body`.
    async fn get_metric_data(&self, body: &Value) -> Result<HttpResponse, QueryError> {
        let credentials = self.credentials().await?;
        let body = serde_json::to_vec(body)
            .map_err(|e| QueryError::InvalidConfig(format!("cannot encode the request: {e}")))?;
        let mut request = build(
            self.http
                .request(Method::POST, &self.url)
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .header(CONTENT_ENCODING, "amz-1.0")
                .header("X-Amz-Target", TARGET)
                .body(body.clone()),
        )?;
        sign_request(&mut request, &body, &credentials, &self.region, SystemTime::now())?;
        let mut response = self.http.execute(request).await?;
        // Role credentials are no Secret values, but credentials all the same.
        let fetched = [Some(credentials.secret_access_key()), credentials.session_token()];
        response.body = Redactor::default().with(fetched.into_iter().flatten()).scrub(&response.body);
        Ok(response)
    }
}

/// Adds the SigV4 headers (`Authorization`, `X-Amz-Date`, and
/// `X-Amz-Security-Token` for session credentials) to `request`, signing its
/// method, URL, host, headers and `body` for the `monitoring` service.
fn sign_request(
    request: &mut reqwest::Request,
    body: &[u8],
    credentials: &Credentials,
    region: &str,
    time: SystemTime,
) -> Result<(), QueryError> {
    let failed = |e: &dyn std::fmt::Display| QueryError::InvalidConfig(format!("cannot sign the request: {e}"));
    let url = request.url();
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => return Err(QueryError::InvalidConfig("the address has no host".into())),
    };
    let mut headers: Vec<(&str, &str)> = vec![("host", host.as_str())];
    for (name, value) in request.headers() {
        headers.push((name.as_str(), value.to_str().map_err(|e| failed(&e))?));
    }
    let identity = credentials.clone().into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("monitoring")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| failed(&e))?
        .into();
    let signable =
        SignableRequest::new(request.method().as_str(), url.as_str(), headers.into_iter(), SignableBody::Bytes(body))
            .map_err(|e| failed(&e))?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| failed(&e))?.into_parts();
    let (signing_headers, _) = instructions.into_parts();
    for header in signing_headers {
        let name = HeaderName::from_static(header.name());
        let mut value = HeaderValue::from_str(header.value()).map_err(|e| failed(&e))?;
        value.set_sensitive(header.sensitive());
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

fn role_cache() -> &'static ExpiringCache<Credentials> {
    static CACHE: OnceLock<ExpiringCache<Credentials>> = OnceLock::new();
    CACHE.get_or_init(ExpiringCache::new)
}

/// A token file's contents (IRSA's projected service account token, Pod
/// Identity's authorization token), bounded in size.
async fn read_token_file(path: &str) -> Result<String, QueryError> {
    use tokio::io::AsyncReadExt;
    let unreadable = |e: std::io::Error| QueryError::InvalidConfig(format!("cannot read the token file {path}: {e}"));
    let file = tokio::fs::File::open(path).await.map_err(unreadable)?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE).read_to_string(&mut text).await.map_err(unreadable)?;
    Ok(text.trim().to_string())
}

/// The text of the first `<tag>` element of an XML body, entities decoded.
/// STS answers are flat and machine-written; this reads nothing else.
fn xml_text(body: &str, tag: &str) -> Option<String> {
    let start = body.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + body[start..].find(&format!("</{tag}>"))?;
    let text = &body[start..end];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&#x2F;", "/")
            .replace("&amp;", "&"),
    )
}

/// Decodes an STS `AssumeRoleWithWebIdentity` answer.
pub(crate) fn parse_sts_credentials(response: &HttpResponse) -> Result<Credentials, QueryError> {
    if !response.is_success() {
        let detail = match (xml_text(&response.body, "Code"), xml_text(&response.body, "Message")) {
            (Some(code), Some(message)) => Some(format!("{code}: {message}")),
            (code, message) => code.or(message),
        };
        return Err(QueryError::Transport(format!(
            "cannot assume the role with the web identity token: {}",
            response.status_error(detail)
        )));
    }
    match (
        xml_text(&response.body, "AccessKeyId"),
        xml_text(&response.body, "SecretAccessKey"),
        xml_text(&response.body, "SessionToken"),
    ) {
        (Some(id), Some(key), token) => Ok(Credentials::new(id, key, token, None, "petrel-web-identity")),
        _ => Err(QueryError::BadResponse("the STS answer holds no credentials".into())),
    }
}

/// Decodes a container credentials answer
/// (`{"AccessKeyId": ..., "SecretAccessKey": ..., "Token": ..., "Expiration": ...}`).
pub(crate) fn parse_container_credentials(response: &HttpResponse) -> Result<Credentials, QueryError> {
    if !response.is_success() {
        return Err(QueryError::Transport(format!(
            "cannot get container credentials: {}",
            response.status_error(None)
        )));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ContainerCredentials {
        access_key_id: String,
        secret_access_key: String,
        #[serde(default)]
        token: Option<String>,
    }
    let parsed: ContainerCredentials = serde_json::from_str(&response.body)
        .map_err(|_| QueryError::BadResponse("the container credentials answer is not the documented JSON".into()))?;
    Ok(Credentials::new(parsed.access_key_id, parsed.secret_access_key, parsed.token, None, "petrel-container"))
}

/// The template's query: a non-empty JSON list of `MetricDataQuery`
/// objects, each with an `Id`. Anything else is refused before a request.
pub(crate) fn parse_queries(query: &str) -> Result<Vec<Value>, QueryError> {
    let refused = |why: String| {
        QueryError::InvalidConfig(format!(
            "the cloudwatch query must be a JSON list of MetricDataQuery objects ({why}): {}",
            quote_query(query)
        ))
    };
    let queries: Vec<Value> = serde_json::from_str(query).map_err(|e| refused(e.to_string()))?;
    if queries.is_empty() {
        return Err(refused("the list is empty".into()));
    }
    for (index, item) in queries.iter().enumerate() {
        if !item.get("Id").is_some_and(Value::is_string) {
            return Err(refused(format!("item {index} has no \"Id\"")));
        }
    }
    Ok(queries)
}

impl MetricProvider for CloudWatchProvider {
    async fn query(&self, query: &str) -> Result<f64, QueryError> {
        let queries = parse_queries(query)?;
        let end = unix_now()?.as_secs();
        let start = end.saturating_sub(self.window.as_secs());
        let body = json!({"MetricDataQueries": queries, "StartTime": start, "EndTime": end});
        let value = match self.get_metric_data(&body).await {
            Ok(response) => {
                let value = parse_response(&response, query);
                tracing::debug!(query, status = response.status, ?value, "cloudwatch query");
                value
            }
            Err(error) => Err(error),
        };
        value.map_err(|error| self.redactor.scrub_error(error))
    }
}

/// CloudWatch's JSON error body: `{"__type": "...#InvalidParameterValue", "message": "..."}`.
fn error_detail(body: &str) -> Option<String> {
    let parsed: Value = serde_json::from_str(body).ok()?;
    let kind = parsed.get("__type").and_then(Value::as_str).map(|t| t.rsplit('#').next().unwrap_or(t));
    let message = parsed.get("message").or_else(|| parsed.get("Message")).and_then(Value::as_str);
    match (kind, message) {
        (Some(kind), Some(message)) => Some(format!("{kind}: {message}")),
        (kind, message) => kind.or(message).map(str::to_string),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetMetricDataResponse {
    #[serde(default)]
    metric_data_results: Vec<MetricDataResult>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MetricDataResult {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status_code: Option<String>,
    #[serde(default)]
    values: Vec<f64>,
    #[serde(default)]
    messages: Vec<Value>,
}

/// Decodes one `GetMetricData` answer into the newest value of its single
/// result.
pub(crate) fn parse_response(response: &HttpResponse, query: &str) -> Result<f64, QueryError> {
    if !response.is_success() {
        return Err(response.status_error(error_detail(&response.body)));
    }
    let parsed: GetMetricDataResponse = serde_json::from_str(&response.body).map_err(|e| {
        QueryError::BadResponse(format!("not GetMetricData JSON ({e}): {}", quote_body(&response.body)))
    })?;
    let result = match <[MetricDataResult; 1]>::try_from(parsed.metric_data_results) {
        Ok([result]) => result,
        Err(results) if results.is_empty() => return Err(QueryError::NoData { query: quote_query(query) }),
        Err(results) => return Err(QueryError::MultipleSeries { count: results.len(), query: quote_query(query) }),
    };
    if let Some(status @ ("InternalError" | "Forbidden")) = result.status_code.as_deref() {
        return Err(QueryError::QueryFailed {
            error_type: status.to_string(),
            message: format!("result {}: {}", result.id.unwrap_or_default(), Value::from(result.messages)),
            query: quote_query(query),
        });
    }
    // Values come newest first (ScanBy's default, TimestampDescending).
    result.values.first().copied().ok_or_else(|| QueryError::NoData { query: quote_query(query) })
}

/// Prints no field: several hold values read from the Secret.
impl std::fmt::Debug for CloudWatchProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CloudWatchProvider(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> HttpResponse {
        HttpResponse { status: 200, retry_after: None, body: body.into() }
    }

    #[test]
    fn the_newest_value_of_the_one_result() {
        let body = r#"{"MetricDataResults":[{"Id":"e1","Label":"ErrorRate","Timestamps":[1700000120,1700000060],"Values":[0.25,0.5],"StatusCode":"Complete"}],"Messages":[]}"#;
        assert_eq!(parse_response(&ok(body), "q"), Ok(0.25));
    }

    #[test]
    fn empty_several_and_failed_results() {
        let empty = r#"{"MetricDataResults":[{"Id":"e1","Timestamps":[],"Values":[],"StatusCode":"Complete"}]}"#;
        assert_eq!(parse_response(&ok(empty), "q"), Err(QueryError::NoData { query: "q".into() }));
        let two = r#"{"MetricDataResults":[{"Id":"a","Values":[1]},{"Id":"b","Values":[2]}]}"#;
        assert_eq!(parse_response(&ok(two), "q"), Err(QueryError::MultipleSeries { count: 2, query: "q".into() }));
        let forbidden = r#"{"MetricDataResults":[{"Id":"a","Values":[],"StatusCode":"Forbidden","Messages":[{"Code":"Forbidden","Value":"no access"}]}]}"#;
        assert!(
            matches!(parse_response(&ok(forbidden), "q"), Err(QueryError::QueryFailed { error_type, .. }) if error_type == "Forbidden")
        );
    }

    #[test]
    fn queries_are_checked_before_sending() {
        assert_eq!(parse_queries(r#"[{"Id":"e1","Expression":"m1/m2"}]"#).unwrap().len(), 1);
        for bad in ["{}", "[]", "[{\"Expression\":\"x\"}]", "not json"] {
            assert!(matches!(parse_queries(bad), Err(QueryError::InvalidConfig(_))), "{bad}");
        }
    }

    #[test]
    fn regions_are_known_or_shaped_with_an_address() {
        assert_eq!(check_region(Some("eu-west-1"), false), Ok("eu-west-1".into()));
        assert!(check_region(Some("eu-west-9"), false).is_err());
        assert_eq!(check_region(Some("eu-west-9"), true), Ok("eu-west-9".into()));
        assert!(check_region(Some("Europe"), true).is_err());
        assert!(check_region(None, true).is_err());
        assert_eq!(regional_endpoint("monitoring", "cn-north-1"), "https://monitoring.cn-north-1.amazonaws.com.cn");
    }

    #[test]
    fn sts_answers_and_errors() {
        let body = "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>tok&amp;en</SessionToken><SecretAccessKey>secret</SecretAccessKey><Expiration>2030-01-01T00:00:00Z</Expiration><AccessKeyId>ASIAEXAMPLE</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let credentials = parse_sts_credentials(&ok(body)).unwrap();
        assert_eq!(credentials.access_key_id(), "ASIAEXAMPLE");
        assert_eq!(credentials.session_token(), Some("tok&en"));
        let error = HttpResponse {
            status: 400,
            retry_after: None,
            body: "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Incorrect token audience</Message></Error></ErrorResponse>".into(),
        };
        let message = parse_sts_credentials(&error).unwrap_err().to_string();
        assert!(message.contains("InvalidIdentityToken: Incorrect token audience"), "{message}");
    }
}
