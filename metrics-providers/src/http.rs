//! The HTTP plumbing shared by the HTTP-based providers: one configured
//! client, authentication, and error mapping. Requests go through an
//! [`EgressClient`], which applies the config's egress policy and reads at
//! most [`MAX_BODY_BYTES`](crate::outbound::MAX_BODY_BYTES) of an answer.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::outbound::{EgressClient, EgressPolicy, OutboundError, RedactedUrl, parse_url};
use crate::provider::{Credentials, DEFAULT_TIMEOUT, ProviderConfig, QueryError, quote_body, truncate};
use crate::secret::Redactor;

/// A client configured from a [`ProviderConfig`]: headers, credentials,
/// timeout and TLS verification.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    client: EgressClient,
    credentials: Credentials,
    timeout: Duration,
    /// Scrubs secret values from every answer before it is decoded, so no
    /// error quoting a body (even cut short) can carry one.
    redactor: Redactor,
}

impl HttpClient {
    pub(crate) fn new(config: &ProviderConfig) -> Result<Self, QueryError> {
        let timeout = config.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(QueryError::InvalidConfig("timeout must be more than 0".into()));
        }
        let builder = reqwest::Client::builder()
            .default_headers(header_map(&config.headers)?)
            .timeout(timeout)
            .tls_danger_accept_invalid_certs(config.insecure_skip_verify);
        let client = EgressClient::new(config.egress.clone(), builder)
            .map_err(|e| QueryError::InvalidConfig(format!("cannot build HTTP client: {e}")))?;
        Ok(Self { client, credentials: config.credentials.clone(), timeout, redactor: config.redactor() })
    }

    /// A client for a backend's token or credentials service: the same
    /// timeout as `config`, but none of the template's headers, credentials
    /// or `insecureSkipVerify`, which are meant for the metrics address.
    /// `egress` is the template's policy for a service the template names (a
    /// service account key's `token_uri`), and unrestricted for one the
    /// operator's environment names (a metadata server, IRSA's STS), which
    /// lives on link-local addresses by design.
    pub(crate) fn for_credentials(config: &ProviderConfig, egress: EgressPolicy) -> Result<Self, QueryError> {
        let mut plain = ProviderConfig::new(config.kind, "");
        plain.timeout = config.timeout;
        plain.egress = egress;
        Ok(Self { redactor: config.redactor(), ..Self::new(&plain)? })
    }

    /// The same client, also scrubbing `values` (secrets that are not in the
    /// template's Secret, e.g. from the operator's environment).
    pub(crate) fn redacting<'a>(mut self, values: impl IntoIterator<Item = &'a str>) -> Self {
        self.redactor = self.redactor.with(values);
        self
    }

    /// A request to `url` with the configured credentials; the caller adds
    /// its parameters, headers and body, then hands it to [`Self::send`].
    pub(crate) fn request(&self, method: reqwest::Method, url: &reqwest::Url) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url.clone());
        match &self.credentials {
            Credentials::None => request,
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::Basic { username, password } => request.basic_auth(username, Some(password)),
        }
    }

    /// GETs `url` with `params` appended to its query string, returning the
    /// status and body of any answer (non-2xx included: callers decode
    /// error bodies).
    pub(crate) async fn get(&self, url: &reqwest::Url, params: &[(&str, &str)]) -> Result<(u16, String), QueryError> {
        let response = self.send(self.request(reqwest::Method::GET, url).query(params)).await?;
        Ok((response.status, response.body))
    }

    /// Sends `request` and reads its answer, whatever the status.
    pub(crate) async fn send(&self, request: reqwest::RequestBuilder) -> Result<HttpResponse, QueryError> {
        self.execute(build(request)?).await
    }

    /// Sends a request built (and, for CloudWatch, signed) by the caller.
    /// Every provider's traffic goes through here, so what bounds an answer
    /// (the egress policy, the timeout, the body's size) bounds all of them.
    pub(crate) async fn execute(&self, request: reqwest::Request) -> Result<HttpResponse, QueryError> {
        let server = RedactedUrl::origin(request.url());
        let answer = self.client.execute(request).await.map_err(|e| self.transport_error(&server, e))?;
        let retry_after = answer
            .headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .map(|value| truncate(value.trim(), MAX_RETRY_AFTER));
        let body = self.redactor.scrub(&answer.body);
        Ok(HttpResponse { status: answer.status, retry_after, body })
    }

    /// The error of a request that got no answer. It names the server by its
    /// origin only: the address may come from a Secret (userinfo, a token in
    /// the path, New Relic's account id) and the query string holds the
    /// query, already in the Event's context.
    fn transport_error(&self, server: &RedactedUrl, error: OutboundError) -> QueryError {
        match error {
            OutboundError::Timeout => QueryError::Timeout(self.timeout),
            OutboundError::Refused(refused) => QueryError::InvalidConfig(format!("{server}: {refused}")),
            OutboundError::TooLarge { .. } => QueryError::BadResponse(format!("{server}: {error}")),
            OutboundError::Transport(reason) | OutboundError::Invalid(reason) => {
                QueryError::Transport(format!("{server}: {reason}"))
            }
        }
    }
}

/// The request `builder` describes, for a caller that must see it before it
/// is sent (to sign it).
pub(crate) fn build(builder: reqwest::RequestBuilder) -> Result<reqwest::Request, QueryError> {
    builder
        .build()
        .map_err(|e| QueryError::InvalidConfig(format!("cannot build the request: {}", crate::outbound::describe(e))))
}

/// Longest `Retry-After` value quoted in a message (a date is 29 characters).
const MAX_RETRY_AFTER: usize = 40;

/// One answer of a metrics backend.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HttpResponse {
    pub(crate) status: u16,
    /// The `Retry-After` header, if any.
    pub(crate) retry_after: Option<String>,
    pub(crate) body: String,
}

impl HttpResponse {
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error for a non-2xx answer: [`QueryError::RateLimited`] for 429,
    /// [`QueryError::Http`] otherwise. `detail` (the error the vendor's body
    /// holds, when it could be decoded) is quoted instead of the raw body.
    pub(crate) fn status_error(&self, detail: Option<String>) -> QueryError {
        let body = quote_body(detail.as_deref().unwrap_or(&self.body));
        if self.status == 429 {
            QueryError::RateLimited { retry_after: self.retry_after.clone(), body }
        } else {
            QueryError::Http { status: self.status, body }
        }
    }
}

/// A header value holding a secret: marked sensitive so that no `Debug`
/// output of the request shows it, and never quoted when invalid.
pub(crate) fn secret_header(value: &str, what: &str) -> Result<HeaderValue, QueryError> {
    let mut value = HeaderValue::from_str(value)
        .map_err(|_| QueryError::InvalidConfig(format!("{what} holds characters an HTTP header cannot carry")))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The current time as seconds since 1970 (the windows of the backends that
/// take one), or an error if the clock is before 1970.
pub(crate) fn unix_now() -> Result<Duration, QueryError> {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| QueryError::InvalidConfig("the system clock is before 1970".into()))
}

/// Parses and checks a provider `address`: an absolute http(s) URL without
/// a fragment, and without a query string unless `allow_query`.
/// Errors never quote the address: it may come from a Secret.
pub(crate) fn parse_address(address: &str, allow_query: bool) -> Result<reqwest::Url, QueryError> {
    let invalid = |why: String| QueryError::InvalidConfig(format!("the address {why}"));
    let url = parse_url(address).map_err(invalid)?;
    if (!allow_query && url.query().is_some()) || url.fragment().is_some() {
        return Err(invalid(if allow_query {
            "must not have a fragment".into()
        } else {
            "must not have a query string or fragment".into()
        }));
    }
    Ok(url)
}

/// `base` with `path` (which starts with `/`) appended to its path: a path
/// prefix of the address is kept, `http://host/dd` + `/api/v1/query` is
/// `http://host/dd/api/v1/query`.
pub(crate) fn endpoint(base: &reqwest::Url, path: &str) -> reqwest::Url {
    let mut url = base.clone();
    url.set_path(&format!("{}{path}", base.path().trim_end_matches('/')));
    url
}

/// `config.address`, or `default` when the template sets none.
pub(crate) fn address_or<'a>(config: &'a ProviderConfig, default: &'a str) -> &'a str {
    if config.address.trim().is_empty() { default } else { &config.address }
}

/// `config.address`, which this backend cannot do without.
pub(crate) fn required_address(config: &ProviderConfig) -> Result<&str, QueryError> {
    if config.address.trim().is_empty() {
        Err(QueryError::InvalidConfig(format!(
            "the {} provider needs an address (spec.provider.address or the Secret's \"address\")",
            config.kind
        )))
    } else {
        Ok(&config.address)
    }
}

fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, QueryError> {
    headers
        .iter()
        .map(|(name, value)| {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| QueryError::InvalidConfig(format!("invalid HTTP header name {name:?}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| QueryError::InvalidConfig(format!("invalid value for HTTP header {name}")))?;
            Ok((name, value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_headers_are_config_errors() {
        let mut headers = BTreeMap::new();
        headers.insert("bad header".to_string(), "v".to_string());
        assert!(matches!(
            header_map(&headers),
            Err(QueryError::InvalidConfig(m)) if m.contains("bad header")
        ));
        let mut headers = BTreeMap::new();
        headers.insert("x-ok".to_string(), "line\nbreak".to_string());
        assert!(matches!(
            header_map(&headers),
            Err(QueryError::InvalidConfig(m)) if m.contains("x-ok")
        ));
    }

    #[test]
    fn addresses_are_checked() {
        for bad in ["", "prom:9090", "ftp://prom", "http://prom#x", "not a url", "http://u:s3cretpw@pr om"] {
            for allow_query in [false, true] {
                assert!(
                    matches!(parse_address(bad, allow_query), Err(QueryError::InvalidConfig(m)) if !m.contains("s3cretpw")),
                    "{bad:?}"
                );
            }
        }
        assert!(parse_address("http://prom?x=1", false).is_err());
        assert!(parse_address("http://prom?x=1", true).is_ok());
    }

    #[test]
    fn zero_timeout_is_a_config_error() {
        let mut config = ProviderConfig::new(crate::ProviderKind::Prometheus, "http://p");
        config.timeout = Some(Duration::ZERO);
        assert!(matches!(HttpClient::new(&config), Err(QueryError::InvalidConfig(_))));
    }
}
