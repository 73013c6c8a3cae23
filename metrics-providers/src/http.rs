//! The HTTP plumbing shared by the HTTP-based providers: one configured
//! client, authentication, and error mapping. Requests go through an
//! [`EgressClient`], which applies the config's egress policy and reads at
//! most [`MAX_BODY_BYTES`](crate::outbound::MAX_BODY_BYTES) of an answer.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use crate::outbound::{EgressClient, OutboundError, RedactedUrl, parse_url};
use crate::provider::{Credentials, DEFAULT_TIMEOUT, ProviderConfig, QueryError};

/// A client configured from a [`ProviderConfig`]: headers, credentials,
/// timeout and TLS verification.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient {
    client: EgressClient,
    credentials: Credentials,
    timeout: Duration,
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
        Ok(Self { client, credentials: config.credentials.clone(), timeout })
    }

    /// GETs `url` with `params` appended to its query string, returning the
    /// status and body of any answer (non-2xx included: callers decode
    /// error bodies).
    pub(crate) async fn get(&self, url: &reqwest::Url, params: &[(&str, &str)]) -> Result<(u16, String), QueryError> {
        let request = self.client.request(reqwest::Method::GET, url.clone()).query(params);
        let request = match &self.credentials {
            Credentials::None => request,
            Credentials::Bearer(token) => request.bearer_auth(token),
            Credentials::Basic { username, password } => request.basic_auth(username, Some(password)),
        };
        let answer = self.client.send(request).await.map_err(|e| self.transport_error(url, e))?;
        Ok((answer.status, answer.body))
    }

    /// The error of a request that got no answer. It names the server by its
    /// origin only: the address may come from a Secret (userinfo, a token in
    /// the path) and the query parameters hold the query, already in the
    /// Event's context.
    fn transport_error(&self, url: &reqwest::Url, error: OutboundError) -> QueryError {
        let server = RedactedUrl::origin(url);
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
