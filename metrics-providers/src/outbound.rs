//! HTTP to addresses that tenants choose: metric backends, webhooks and
//! alert receivers.
//!
//! Whoever writes a Canary, a MetricTemplate or an AlertProvider decides
//! where petrel connects and what it reads back, so every such request goes
//! through one [`EgressClient`], which
//!
//! - refuses targets the [`EgressPolicy`] does not allow: by default the
//!   loopback addresses (the operator's own ports, a sidecar's), link-local
//!   addresses (`169.254.0.0/16` and `fe80::/10`, where cloud metadata
//!   services answer) and the other addresses that reach this host
//!   (`0.0.0.0/8`, `::`), plus AWS's metadata address `fd00:ec2::254`. The
//!   check is on the IP addresses a name resolves to (a DNS resolver hook),
//!   on IP literals in the URL, and on every redirect, so neither a DNS name
//!   pointing at `169.254.169.254` nor a redirect to it gets through. When
//!   a proxy is used (an AlertProvider's `proxy`, or `HTTPS_PROXY` in the
//!   operator's environment) the proxy resolves the target: the policy then
//!   applies to the proxy's address and to IP literals in the target URL;
//! - reads at most [`MAX_BODY_BYTES`] of an answer's body; a longer body is
//!   an error naming the limit, and the rest is never read;
//! - reports failures without the URL: reqwest's errors print the whole URL
//!   (userinfo, tokens in the query); petrel names a target only through a
//!   [`RedactedUrl`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use ipnet::IpNet;
use reqwest::Url;

/// Longest answer body petrel reads from a metric backend, webhook or alert
/// receiver: 1 MiB. A Prometheus range query of a whole analysis is a few
/// hundred KiB.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Most redirects followed for one request (reqwest's default).
const MAX_REDIRECTS: usize = 10;

/// What replaces a secret value in a message.
pub const REDACTED: &str = "<redacted>";

/// Which addresses petrel may connect to on a tenant's behalf; see the
/// [module docs](self). `Default` is the strict policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    unrestricted: bool,
    allow_loopback: bool,
    allowed: Vec<IpNet>,
}

impl EgressPolicy {
    /// Refuses every restricted address.
    pub fn strict() -> Self {
        Self::default()
    }

    /// Allows every address: for addresses the operator's own flags name
    /// (`--metrics-server`), which its administrator chose.
    pub fn unrestricted() -> Self {
        Self { unrestricted: true, ..Self::default() }
    }

    /// Also allows loopback addresses (and `0.0.0.0/8`, `::`, which reach
    /// this host too).
    pub fn allowing_loopback(mut self) -> Self {
        self.allow_loopback = true;
        self
    }

    /// Also allows every address in `net`, restricted or not.
    pub fn allowing(mut self, net: IpNet) -> Self {
        self.allowed.push(net.trunc());
        self
    }

    /// Whether petrel may connect to `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(class) = restriction(ip) else { return Ok(()) };
        let ip = ip.to_canonical();
        let allowed = self.unrestricted
            || self.allowed.iter().any(|net| net.contains(&ip))
            || (self.allow_loopback && matches!(class, Restriction::Loopback | Restriction::ThisHost));
        if allowed { Ok(()) } else { Err(Refused { host: None, address: ip, class }) }
    }

    /// Checks an IP literal in `url`'s host (names are checked when they are
    /// resolved).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        // The URL parser writes IPv4 hosts in dotted form (`http://2130706433/`
        // is `127.0.0.1`) and IPv6 hosts in brackets.
        let host = url.host_str().unwrap_or_default();
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => self.check_ip(ip),
            Err(_) => Ok(()),
        }
    }

    /// The addresses `host` resolved to that petrel may connect to; refused
    /// when there is none.
    pub fn filter_resolved(&self, host: &str, resolved: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let mut first_refusal = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|address| match self.check_ip(address.ip()) {
                Ok(()) => true,
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                    false
                }
            })
            .collect();
        match first_refusal {
            Some(refused) if allowed.is_empty() => Err(Refused { host: Some(host.to_owned()), ..refused }),
            _ => Ok(allowed),
        }
    }
}

/// Parses an allowed range for [`EgressPolicy::allowing`]: a CIDR
/// (`10.0.0.0/8`, `fe80::/10`) or a single address (`127.0.0.1`).
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither a CIDR (e.g. 10.0.0.0/8) nor an IP address"))
}

/// Why an address is restricted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restriction {
    Loopback,
    LinkLocal,
    ThisHost,
    Metadata,
}

fn restriction(ip: IpAddr) -> Option<Restriction> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => restriction_v4(v4),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            if v6.is_loopback() {
                Some(Restriction::Loopback)
            } else if v6.is_unspecified() {
                Some(Restriction::ThisHost)
            } else if segments[0] & 0xffc0 == 0xfe80 {
                Some(Restriction::LinkLocal)
            } else if v6 == AWS_METADATA_V6 {
                Some(Restriction::Metadata)
            } else if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64 (64:ff9b::/96): the IPv4 address it translates to.
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                restriction_v4(Ipv4Addr::new(a, b, c, d))
            } else {
                None
            }
        }
    }
}

/// AWS's instance metadata service over IPv6 (a unique local address).
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

fn restriction_v4(ip: Ipv4Addr) -> Option<Restriction> {
    if ip.is_loopback() {
        Some(Restriction::Loopback)
    } else if ip.is_link_local() {
        Some(Restriction::LinkLocal)
    } else if ip.octets()[0] == 0 {
        Some(Restriction::ThisHost)
    } else {
        None
    }
}

/// A target the [`EgressPolicy`] refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The name that resolved to [`Self::address`], if the URL held a name.
    host: Option<String>,
    address: IpAddr,
    class: Restriction,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, flag) = match self.class {
            Restriction::Loopback => ("a loopback address", "--egress-allow-loopback or --egress-allow-cidr"),
            Restriction::ThisHost => ("an address of this host", "--egress-allow-loopback or --egress-allow-cidr"),
            Restriction::LinkLocal => {
                ("a link-local address (where cloud metadata services answer)", "--egress-allow-cidr")
            }
            Restriction::Metadata => ("a cloud metadata address", "--egress-allow-cidr"),
        };
        f.write_str("refused by petrel's egress policy: ")?;
        if let Some(host) = &self.host {
            write!(f, "{host} resolves to ")?;
        }
        write!(f, "{}, {what}; the operator's {flag} can allow it", self.address)
    }
}

impl std::error::Error for Refused {}

/// A DNS resolver that keeps only the addresses the policy allows.
struct PolicyResolver {
    policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed = policy.filter_resolved(&host, resolved)?;
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// An HTTP client for tenant-chosen targets; see the [module docs](self).
/// The inner `reqwest::Client` is private so that every request goes
/// through [`EgressClient::send`].
#[derive(Clone)]
pub struct EgressClient {
    client: reqwest::Client,
    policy: Arc<EgressPolicy>,
}

impl fmt::Debug for EgressClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EgressClient").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl EgressClient {
    /// A client from `builder` (timeouts, headers, TLS options...), with the
    /// policy's DNS resolver and redirect checks set on top.
    pub fn new(policy: EgressPolicy, builder: reqwest::ClientBuilder) -> Result<Self, OutboundError> {
        let policy = Arc::new(policy);
        let redirects = policy.clone();
        let client = builder
            .dns_resolver(PolicyResolver { policy: policy.clone() })
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if let Err(refused) = redirects.check_url(attempt.url()) {
                    attempt.error(refused)
                } else if attempt.previous().len() >= MAX_REDIRECTS {
                    attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
                } else {
                    attempt.follow()
                }
            }))
            .build()
            .map_err(|error| OutboundError::Invalid(format!("cannot build the HTTP client: {}", describe(error))))?;
        Ok(Self { client, policy })
    }

    /// As [`EgressClient::new`], sending every request through the proxy at
    /// `proxy` (which the policy must allow).
    pub fn with_proxy(
        policy: EgressPolicy,
        builder: reqwest::ClientBuilder,
        proxy: &str,
    ) -> Result<Self, OutboundError> {
        let proxy_url = parse_url(proxy).map_err(|why| OutboundError::Invalid(format!("the proxy {why}")))?;
        policy.check_url(&proxy_url).map_err(OutboundError::Refused)?;
        let proxy = reqwest::Proxy::all(proxy_url)
            .map_err(|error| OutboundError::Invalid(format!("invalid proxy: {}", describe(error))))?;
        Self::new(policy, builder.proxy(proxy))
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &EgressPolicy {
        &self.policy
    }

    /// A request to `url`, to be completed and passed to [`Self::send`].
    pub fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        self.client.request(method, url)
    }

    /// Sends `request` and reads its answer, whatever its status, up to
    /// [`MAX_BODY_BYTES`] of body.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, OutboundError> {
        let request = request.build().map_err(|error| OutboundError::Invalid(describe(error)))?;
        self.execute(request).await
    }

    /// As [`Self::send`], for a request the caller built (and, say, signed) itself.
    pub async fn execute(&self, request: reqwest::Request) -> Result<Answer, OutboundError> {
        self.policy.check_url(request.url()).map_err(OutboundError::Refused)?;
        let response = self.client.execute(request).await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = read_capped(response, MAX_BODY_BYTES).await?;
        Ok(Answer { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    }
}

/// One answer, its body read in full (up to the cap).
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// The response headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboundError {
    /// The target is not allowed.
    #[error("{0}")]
    Refused(Refused),
    /// No complete answer within the request's timeout.
    #[error("no answer within the timeout")]
    Timeout,
    /// The answer's body is longer than the cap.
    #[error("the answer's body is over petrel's limit of {limit} bytes ({} MiB); the rest was not read", limit / (1024 * 1024))]
    TooLarge {
        /// The cap, in bytes.
        limit: usize,
    },
    /// The request could not be sent or the answer not read (DNS,
    /// connection refused, TLS...), with its causes, never the URL.
    #[error("{0}")]
    Transport(String),
    /// The request or client could not be built.
    #[error("{0}")]
    Invalid(String),
}

fn transport_error(error: reqwest::Error) -> OutboundError {
    if error.is_timeout() {
        return OutboundError::Timeout;
    }
    if let Some(refused) = causes(&error).find_map(|cause| cause.downcast_ref::<Refused>()) {
        return OutboundError::Refused(refused.clone());
    }
    OutboundError::Transport(describe(error))
}

/// Reads at most `cap` bytes of body; more is [`OutboundError::TooLarge`].
async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Vec<u8>, OutboundError> {
    let too_large = OutboundError::TooLarge { limit: cap };
    if response.content_length().is_some_and(|length| length > cap as u64) {
        return Err(too_large);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if body.len() + chunk.len() > cap {
            return Err(too_large);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A reqwest error with its causes, never its URL: reqwest's own message
/// ("error sending request") hides the useful part ("Connection refused").
pub fn describe(error: reqwest::Error) -> String {
    error_chain(&error.without_url())
}

/// The causes of `error` (its sources, nearest first), without `error` itself.
fn causes<'a>(error: &'a dyn std::error::Error) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(error.source(), |cause| cause.source())
}

/// `error` and its causes on one line, joined by `: ` as anyhow's `{:#}` does. A cause
/// whose text the line already holds is left out: some errors (kube's among them) print
/// their source in their own message too.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    for cause in causes(error) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Parses an http(s) URL. The error never quotes `text`: it may hold a
/// password or token.
pub fn parse_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|error| format!("is not a valid URL ({error})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("must be an http or https URL, not {}", url.scheme()));
    }
    if url.host().is_none() {
        return Err("has no host".into());
    }
    Ok(url)
}

/// A URL as petrel shows it in logs, Events, status and metrics: without
/// userinfo, fragment or query values, and for an address whose path may
/// be a credential (a chat webhook, an address from a Secret) without the
/// path. The only way to show a target.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactedUrl(String);

impl RedactedUrl {
    /// `scheme://host:port`, e.g. for a Slack webhook URL whose path is its
    /// key, or any address read from a Secret.
    pub fn origin(url: &Url) -> Self {
        let mut shown = url.origin().ascii_serialization();
        if url.path() != "/" || url.query().is_some() {
            shown.push_str("/…");
        }
        Self(shown)
    }

    /// The URL without userinfo or fragment, and with every query value
    /// replaced by [`REDACTED`] (tokens travel there: `token=`, `sig=`...).
    pub fn path(url: &Url) -> Self {
        let mut shown = url.clone();
        // Only fails for URLs that cannot have userinfo, which then have none.
        let _ = shown.set_username("");
        let _ = shown.set_password(None);
        shown.set_fragment(None);
        let names: Vec<String> = url.query_pairs().map(|(name, _)| name.into_owned()).collect();
        if names.is_empty() {
            shown.set_query(None);
        } else {
            let mut query = shown.query_pairs_mut();
            query.clear();
            for name in &names {
                query.append_pair(name, REDACTED);
            }
        }
        Self(shown.to_string())
    }
}

impl fmt::Display for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RedactedUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The credentials a URL may carry, for [`scrub`]bing a body its server answered (a
/// server may echo the request): userinfo and every query value.
pub fn url_credentials(url: &Url) -> Vec<String> {
    let mut credentials = vec![url.username().to_owned()];
    credentials.extend(url.password().map(str::to_owned));
    credentials.extend(url.query_pairs().map(|(_, value)| value.into_owned()));
    credentials
}

/// What to scrub for a secret `value`: the value, and when it is a URL (a Slack
/// webhook, a backend address with a password) the parts that carry its secret on
/// their own: its [`url_credentials`], and path segments that look like keys (8
/// characters or more, with a digit; words such as `services` stay readable).
pub fn secret_fragments(value: &str) -> Vec<String> {
    let mut fragments = vec![value.trim().to_owned()];
    let Ok(url) = Url::parse(value.trim()) else { return fragments };
    let looks_like_key = |part: &&str| part.len() >= 8 && part.bytes().any(|b| b.is_ascii_digit());
    fragments.extend(url_credentials(&url));
    fragments.extend(url.path_segments().into_iter().flatten().filter(looks_like_key).map(str::to_owned));
    fragments
}

/// `text` with every value of `secrets` (of 4 characters or more: shorter
/// ones would also match ordinary words) replaced by [`REDACTED`], longest
/// first, for quoting a body a receiver answered.
pub fn scrub<'a>(text: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut secrets: Vec<&str> = secrets.into_iter().map(str::trim).filter(|s| s.chars().count() >= 4).collect();
    secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
    secrets.into_iter().fold(text.to_owned(), |text, secret| text.replace(secret, REDACTED))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_strict_policy_refuses_this_host_link_local_and_metadata_addresses() {
        let strict = EgressPolicy::strict();
        for refused in [
            "127.0.0.1",
            "127.1.2.3",
            "::1",
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "0.0.0.0",
            "::",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "fd00:ec2::254",
        ] {
            assert!(strict.check_ip(ip(refused)).is_err(), "{refused}");
        }
        for allowed in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "fd00::1", "2001:db8::1", "fec0::1", "169.255.0.1"] {
            assert_eq!(strict.check_ip(ip(allowed)), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn loopback_and_cidrs_can_be_allowed() {
        let loopback = EgressPolicy::strict().allowing_loopback();
        assert_eq!(loopback.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(loopback.check_ip(ip("::1")), Ok(()));
        assert!(loopback.check_ip(ip("169.254.169.254")).is_err(), "loopback does not open link-local");

        let one = EgressPolicy::strict().allowing(parse_cidr("127.0.0.1").unwrap());
        assert_eq!(one.check_ip(ip("127.0.0.1")), Ok(()));
        assert_eq!(one.check_ip(ip("::ffff:127.0.0.1")), Ok(()), "the mapped form is the same address");
        assert!(one.check_ip(ip("127.0.0.2")).is_err());
        let link_local = EgressPolicy::strict().allowing(parse_cidr("169.254.10.0/24").unwrap());
        assert_eq!(link_local.check_ip(ip("169.254.10.7")), Ok(()));
        assert!(link_local.check_ip(ip("169.254.169.254")).is_err());
        assert_eq!(EgressPolicy::unrestricted().check_ip(ip("169.254.169.254")), Ok(()));
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").unwrap_err().contains("nope"));
    }

    #[test]
    fn refusals_say_what_and_how_to_allow_it() {
        let message = EgressPolicy::strict().check_ip(ip("169.254.169.254")).unwrap_err().to_string();
        assert!(message.contains("169.254.169.254") && message.contains("link-local"), "{message}");
        assert!(message.contains("--egress-allow-cidr"), "{message}");
        let resolved = vec![SocketAddr::new(ip("169.254.169.254"), 0)];
        let message = EgressPolicy::strict().filter_resolved("metadata.example", resolved).unwrap_err().to_string();
        assert!(message.contains("metadata.example resolves to 169.254.169.254"), "{message}");
    }

    #[test]
    fn names_keep_only_their_allowed_addresses() {
        let strict = EgressPolicy::strict();
        let mixed = vec![SocketAddr::new(ip("127.0.0.1"), 0), SocketAddr::new(ip("10.1.2.3"), 0)];
        assert_eq!(strict.filter_resolved("mixed", mixed), Ok(vec![SocketAddr::new(ip("10.1.2.3"), 0)]));
        assert_eq!(strict.filter_resolved("none", vec![]), Ok(vec![]));
    }

    #[test]
    fn urls_are_shown_without_credentials() {
        let url = Url::parse("https://user:hunter22@hooks.example.com:8443/services/T0/B0/s3cr3t?token=abc&x=1#frag")
            .unwrap();
        assert_eq!(RedactedUrl::origin(&url).to_string(), "https://hooks.example.com:8443/…");
        let shown = RedactedUrl::path(&url).to_string();
        assert_eq!(shown, "https://hooks.example.com:8443/services/T0/B0/s3cr3t?token=%3Credacted%3E&x=%3Credacted%3E");
        assert!(!shown.contains("hunter22") && !shown.contains("abc") && !shown.contains("frag"));
        assert_eq!(format!("{:?}", RedactedUrl::origin(&url)), "https://hooks.example.com:8443/…");
        assert_eq!(RedactedUrl::origin(&Url::parse("http://prom:9090/").unwrap()).to_string(), "http://prom:9090");
        assert_eq!(RedactedUrl::path(&Url::parse("http://h/gate").unwrap()).to_string(), "http://h/gate");
    }

    #[test]
    fn unparsable_urls_are_not_quoted() {
        for bad in ["http://user:secretpw@ho st/", "not a url http://u:secretpw@x", "ftp://u:secretpw@host/", "http://"]
        {
            let why = parse_url(bad).unwrap_err();
            assert!(!why.contains("secretpw"), "{why}");
        }
        assert!(parse_url(" https://host/x ").is_ok());
    }

    #[test]
    fn secret_urls_are_scrubbed_in_parts() {
        let address =
            "https://bot:pw-123456@hooks.example.com/services/T0AB12CD3/B0EF45GH6/aBcD3fGh1jKlMnOp?key=k3y-0987654&x=1";
        let fragments = secret_fragments(address);
        let echoed = "403 for /services/T0AB12CD3/B0EF45GH6/aBcD3fGh1jKlMnOp key=k3y-0987654 user bot:pw-123456";
        let scrubbed = scrub(echoed, fragments.iter().map(String::as_str));
        for secret in ["T0AB12CD3", "B0EF45GH6", "aBcD3fGh1jKlMnOp", "k3y-0987654", "pw-123456"] {
            assert!(!scrubbed.contains(secret), "{secret} in {scrubbed}");
        }
        assert!(scrubbed.contains("/services/"), "{scrubbed}");
        assert_eq!(secret_fragments("plain-value"), vec!["plain-value".to_string()]);
    }

    #[test]
    fn scrub_replaces_secret_values_longest_first() {
        assert_eq!(
            scrub("token abcd-efgh and abcd, also ab", ["abcd", "abcd-efgh", "ab"]),
            "token <redacted> and <redacted>, also ab"
        );
    }

    /// Serves one connection on 127.0.0.1 with `answer` (raw HTTP), then closes.
    fn serve_once(answer: Vec<u8>) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(&answer);
            }
        });
        port
    }

    /// A server streaming `total` bytes of body in 64 KiB chunks (chunked encoding, no
    /// length announced), counting how many it managed to send before the client hung up.
    fn serve_endless(total: usize) -> (u16, std::sync::mpsc::Receiver<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (sent_tx, sent_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), &chunk, b"\r\n"].concat();
                if stream.write_all(&framed).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            let _ = sent_tx.send(sent);
        });
        (port, sent_rx)
    }

    fn loopback() -> EgressClient {
        let builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        EgressClient::new(EgressPolicy::strict().allowing_loopback(), builder).unwrap()
    }

    fn get(client: &EgressClient, url: &str) -> reqwest::RequestBuilder {
        client.request(reqwest::Method::GET, Url::parse(url).unwrap())
    }

    #[tokio::test]
    async fn a_huge_body_is_cut_at_the_cap_and_not_read_further() {
        let client = loopback();
        // 300 MB, as in the issue: the client stops after about 1 MiB.
        let (port, sent) = serve_endless(300 * 1024 * 1024);
        let error = client.send(get(&client, &format!("http://127.0.0.1:{port}/"))).await.unwrap_err();
        assert_eq!(error, OutboundError::TooLarge { limit: MAX_BODY_BYTES });
        assert!(error.to_string().contains("1 MiB"), "{error}");
        drop(client);
        // Waited for off the runtime's thread: the connection's task must run to hang up.
        let sent = tokio::task::spawn_blocking(move || sent.recv_timeout(Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("the server stops when the client hangs up");
        // What the kernel buffers between the two sockets comes on top of the cap.
        assert!(sent < 32 * 1024 * 1024, "the server managed to send {sent} bytes");
    }

    #[tokio::test]
    async fn an_announced_huge_body_is_refused_before_reading() {
        let client = loopback();
        let port = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 314572800\r\n\r\nxxxx".to_vec());
        let error = client.send(get(&client, &format!("http://127.0.0.1:{port}/"))).await.unwrap_err();
        assert_eq!(error, OutboundError::TooLarge { limit: MAX_BODY_BYTES });
        // Exactly the cap is fine.
        let body = vec![b'y'; MAX_BODY_BYTES];
        let answer = [format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(), body].concat();
        let port = serve_once(answer);
        let answer = client.send(get(&client, &format!("http://127.0.0.1:{port}/"))).await.unwrap();
        assert_eq!((answer.status, answer.body.len()), (200, MAX_BODY_BYTES));
    }

    #[tokio::test]
    async fn restricted_targets_are_refused_by_literal_by_name_and_by_redirect() {
        let port = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec());
        let strict = EgressClient::new(EgressPolicy::strict(), reqwest::Client::builder()).unwrap();
        let literal = strict.send(get(&strict, &format!("http://127.0.0.1:{port}/"))).await.unwrap_err();
        assert!(matches!(&literal, OutboundError::Refused(_)), "{literal:?}");
        let metadata = strict.send(get(&strict, "http://169.254.169.254/latest/meta-data/")).await.unwrap_err();
        assert!(matches!(&metadata, OutboundError::Refused(_)), "{metadata:?}");
        // A name: `localhost` resolves to loopback addresses only (from /etc/hosts).
        let by_name = strict.send(get(&strict, &format!("http://localhost:{port}/"))).await.unwrap_err();
        assert!(
            matches!(&by_name, OutboundError::Refused(r) if r.to_string().contains("localhost resolves to")),
            "{by_name:?}"
        );
        // The server was never reached: it still answers a client that may reach it.
        let answer = loopback().send(get(&loopback(), &format!("http://127.0.0.1:{port}/"))).await.unwrap();
        assert_eq!(answer.body, "ok");

        // A redirect from an allowed server to a refused one.
        let target = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret".to_vec());
        let redirect =
            format!("HTTP/1.1 302 Found\r\nlocation: http://[::ffff:127.0.0.2]:{target}/\r\ncontent-length: 0\r\n\r\n");
        let port = serve_once(redirect.into_bytes());
        let only_first = EgressClient::new(
            EgressPolicy::strict().allowing(parse_cidr("127.0.0.1/32").unwrap()),
            reqwest::Client::builder(),
        )
        .unwrap();
        let error = only_first.send(get(&only_first, &format!("http://127.0.0.1:{port}/"))).await.unwrap_err();
        assert!(matches!(&error, OutboundError::Refused(r) if r.to_string().contains("127.0.0.2")), "{error:?}");
    }

    /// An error whose message is `text` (with its source's appended when `repeats`).
    #[derive(Debug)]
    struct Layer {
        text: &'static str,
        repeats: bool,
        source: Option<Box<Layer>>,
    }

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match (&self.source, self.repeats) {
                (Some(source), true) => write!(f, "{}: {source}", self.text),
                _ => f.write_str(self.text),
            }
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.source.as_deref().map(|source| source as &(dyn std::error::Error + 'static))
        }
    }

    fn layer(text: &'static str, repeats: bool, source: Option<Layer>) -> Layer {
        Layer { text, repeats, source: source.map(Box::new) }
    }

    #[test]
    fn an_error_chain_names_every_cause_once() {
        let refused = layer("Connection refused (os error 111)", false, None);
        let connect = layer("tcp connect error", false, Some(refused));
        let chain = error_chain(&layer("error sending request", false, Some(connect)));
        assert_eq!(chain, "error sending request: tcp connect error: Connection refused (os error 111)");

        // A layer that prints its source itself (kube's HyperError does): the source is not repeated.
        let refused = layer("Connection refused (os error 111)", false, None);
        let chain = error_chain(&layer("HyperError", true, Some(layer("client error (Connect)", true, Some(refused)))));
        assert_eq!(chain, "HyperError: client error (Connect): Connection refused (os error 111)");

        assert_eq!(error_chain(&layer("alone", false, None)), "alone");
    }

    #[tokio::test]
    async fn transport_errors_never_show_the_url() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = loopback();
        let error = client
            .send(get(&client, &format!("http://user:hunter22@127.0.0.1:{port}/x?token=s3cr3tvalue")))
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, OutboundError::Transport(_)), "{message}");
        assert!(!message.contains("hunter22") && !message.contains("s3cr3tvalue"), "{message}");
    }

    #[tokio::test]
    async fn a_proxy_must_be_allowed_too() {
        let error =
            EgressClient::with_proxy(EgressPolicy::strict(), reqwest::Client::builder(), "http://127.0.0.1:3128")
                .unwrap_err();
        assert!(matches!(error, OutboundError::Refused(_)), "{error:?}");
        let error =
            EgressClient::with_proxy(EgressPolicy::strict(), reqwest::Client::builder(), "http://u:pw1234@[bad")
                .unwrap_err()
                .to_string();
        assert!(!error.contains("pw1234"), "{error}");
    }
}
