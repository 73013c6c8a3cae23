//! The traffic split a route object describes, and how simulated requests
//! are dealt out according to it.
//!
//! Everything here is pure: the route parsers produce a [`Split`], and the
//! [`Dispatcher`] turns a split and an elapsed time into request counts per
//! workload. Fractions are carried over between steps, so over time each
//! workload receives exactly its share of the configured rate, which lets
//! tests compare rates with tight tolerances.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Which of the two workloads of a Canary serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// `<target>-primary`, the stable version.
    Primary,
    /// `<target>`, the user's Deployment, which carries the new version.
    Canary,
}

impl Side {
    /// Both sides, primary first.
    pub const BOTH: [Side; 2] = [Side::Primary, Side::Canary];

    /// Suffix petrel gives the generated Services of this side.
    pub fn suffix(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Canary => "canary",
        }
    }

    /// The Deployment serving this side of Canary target `target`.
    pub fn workload(self, target: &str) -> String {
        match self {
            Side::Primary => format!("{target}-primary"),
            Side::Canary => target.to_owned(),
        }
    }
}

/// Weights of one route rule, as written (not normalised), so a test can
/// check that they sum to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Weights {
    /// Weight of backends naming the primary (`<service>-primary`).
    pub primary: u32,
    /// Weight of backends naming the canary (`<service>-canary`).
    pub canary: u32,
    /// Weight of backends that are neither; their requests are lost.
    pub other: u32,
}

impl Weights {
    /// Every request to the primary.
    pub const ALL_PRIMARY: Weights = Weights { primary: 100, canary: 0, other: 0 };
    /// Every request to the canary.
    pub const ALL_CANARY: Weights = Weights { primary: 0, canary: 100, other: 0 };

    /// Primary and canary weights, nothing else.
    pub fn new(primary: u32, canary: u32) -> Self {
        Weights { primary, canary, other: 0 }
    }

    /// Sum of all weights.
    pub fn total(&self) -> u32 {
        self.primary + self.canary + self.other
    }

    /// The weight of `side`.
    pub fn of(&self, side: Side) -> u32 {
        match side {
            Side::Primary => self.primary,
            Side::Canary => self.canary,
        }
    }

    fn add(&mut self, destination: Option<Side>, weight: u32) {
        match destination {
            Some(Side::Primary) => self.primary += weight,
            Some(Side::Canary) => self.canary += weight,
            None => self.other += weight,
        }
    }

    /// Adds `weight` for a backend named `backend` (see [`classify_backend`]).
    pub fn add_backend(&mut self, backend: &str, service: &str, weight: u32) {
        self.add(classify_backend(backend, service), weight);
    }
}

/// Which side a backend name (a Service name, or an Istio host such as
/// `podinfo-canary.test.svc.cluster.local`) points at; `None` when it is
/// neither generated Service.
pub fn classify_backend(backend: &str, service: &str) -> Option<Side> {
    let short = backend.split('.').next().unwrap_or(backend);
    Side::BOTH
        .into_iter()
        .find(|side| short.strip_prefix(service).and_then(|rest| rest.strip_prefix('-')) == Some(side.suffix()))
}

/// How one request header must look for a rule to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HeaderValueMatch {
    /// Exactly this value.
    Exact(String),
    /// A value matching this (RE2-style, fully anchored) regex.
    Regex(String),
    /// Any value.
    Present,
}

/// A condition on one request header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    /// Header name, lowercase (HTTP header names are case-insensitive).
    pub name: String,
    /// What the value must be.
    pub value: HeaderValueMatch,
}

impl HeaderMatch {
    /// A header match; `name` is lowercased.
    pub fn new(name: &str, value: HeaderValueMatch) -> Self {
        HeaderMatch { name: name.to_ascii_lowercase(), value }
    }

    fn matches(&self, headers: &BTreeMap<String, String>) -> bool {
        let Some(actual) = headers.get(&self.name) else {
            return false;
        };
        match &self.value {
            HeaderValueMatch::Exact(expected) => actual == expected,
            HeaderValueMatch::Present => true,
            // An invalid regex in a route matches nothing, as a proxy would
            // reject the route.
            HeaderValueMatch::Regex(pattern) => {
                regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(actual))
            }
        }
    }
}

/// The `Set-Cookie` values a rule's response header modifiers add to a response, by the
/// side that served it (a modifier on the whole rule adds to both sides'). Other response
/// headers are not kept: only cookies change what a client sends next.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct SetCookies {
    /// Added to the primary's responses.
    pub primary: Vec<String>,
    /// Added to the canary's responses.
    pub canary: Vec<String>,
}

impl SetCookies {
    /// No cookie set on either side.
    pub fn is_empty(&self) -> bool {
        self.primary.is_empty() && self.canary.is_empty()
    }

    /// Adds `values` to the responses of `side`, or of both sides for `None` (a
    /// modifier on the rule rather than on one destination).
    pub fn add(&mut self, side: Option<Side>, values: &[String]) {
        for s in Side::BOTH {
            if side.is_none_or(|only| only == s) {
                self.of_mut(s).extend(values.iter().cloned());
            }
        }
    }

    /// The values added to `side`'s responses.
    pub fn of(&self, side: Side) -> &[String] {
        match side {
            Side::Primary => &self.primary,
            Side::Canary => &self.canary,
        }
    }

    fn of_mut(&mut self, side: Side) -> &mut Vec<String> {
        match side {
            Side::Primary => &mut self.primary,
            Side::Canary => &mut self.canary,
        }
    }
}

/// A rule that applies to requests carrying certain headers (A/B testing, and the
/// sticky rules of session affinity, which match the `Cookie` header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeaderRule {
    /// All of these must hold.
    pub matches: Vec<HeaderMatch>,
    /// Where matching requests go.
    pub weights: Weights,
    /// Cookies its responses set.
    #[serde(skip_serializing_if = "SetCookies::is_empty")]
    pub set_cookies: SetCookies,
}

impl HeaderRule {
    /// A rule whose responses set no cookie.
    pub fn new(matches: Vec<HeaderMatch>, weights: Weights) -> Self {
        HeaderRule { matches, weights, set_cookies: SetCookies::default() }
    }
}

/// Where one request went, as a proxy decides it (see [`Split::route`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Routed {
    /// Weights of the rule that decided.
    pub weights: Weights,
    /// The side that served it; `None`: no workload (weight on an unknown backend, or
    /// no weight at all).
    pub side: Option<Side>,
    /// `Set-Cookie` values of the response.
    pub set_cookies: Vec<String>,
    /// A copy was mirrored to the canary.
    pub mirrored: bool,
}

/// The routing a route object describes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Split {
    /// Header rules, in the order the proxy evaluates them; the first that
    /// matches decides.
    pub header_rules: Vec<HeaderRule>,
    /// Where requests matching no header rule go. All zero: nowhere (the
    /// proxy answers them itself and no workload sees them).
    pub default: Weights,
    /// Percent of the requests the default rule sends to the primary that
    /// are also copied to the canary (traffic mirroring); responses to the
    /// copies are discarded, but the canary serves and reports them.
    pub mirror_percent: Option<u32>,
    /// Cookies the default rule's responses set.
    #[serde(skip_serializing_if = "SetCookies::is_empty")]
    pub default_set_cookies: SetCookies,
}

impl Split {
    /// A plain weighted split with no header rules and no mirroring.
    pub fn weighted(primary: u32, canary: u32) -> Self {
        Split { default: Weights::new(primary, canary), ..Split::default() }
    }

    /// Every request to one side.
    pub fn all_to(side: Side) -> Self {
        Split {
            default: match side {
                Side::Primary => Weights::ALL_PRIMARY,
                Side::Canary => Weights::ALL_CANARY,
            },
            ..Split::default()
        }
    }

    /// The header rule that decides for a request with `headers`
    /// (lowercase names); `None`: the default rule does.
    pub fn header_rule_for(&self, headers: &BTreeMap<String, String>) -> Option<&HeaderRule> {
        self.header_rules.iter().find(|rule| rule.matches.iter().all(|m| m.matches(headers)))
    }

    /// The rule weights for a request with `headers` (lowercase names).
    pub fn weights_for(&self, headers: &BTreeMap<String, String>) -> Weights {
        self.header_rule_for(headers).map_or(self.default, |rule| rule.weights)
    }

    /// Where one request with `headers` (lowercase names; cookies in `cookie`) goes, as
    /// a proxy decides it: the rule [`Split::header_rule_for`] picks (else the default),
    /// then a backend by weight with `draw()` (uniform in [0, 1)), then a mirrored copy
    /// (default rule only) with a second draw. The response carries the rule's
    /// `Set-Cookie` values for the side that served it.
    pub fn route(&self, headers: &BTreeMap<String, String>, mut draw: impl FnMut() -> f64) -> Routed {
        let rule = self.header_rule_for(headers);
        let (weights, cookies) =
            rule.map_or((self.default, &self.default_set_cookies), |r| (r.weights, &r.set_cookies));
        let side = pick(&weights, draw());
        let mirrored = rule.is_none()
            && side == Some(Side::Primary)
            && draw() * 100.0 < f64::from(self.mirror_percent.unwrap_or(0).min(100));
        let set_cookies = side.map(|s| cookies.of(s).to_vec()).unwrap_or_default();
        Routed { weights, side, set_cookies, mirrored }
    }

    /// Every rule's weights (header rules, then the default).
    pub fn all_weights(&self) -> impl Iterator<Item = Weights> + '_ {
        self.header_rules.iter().map(|r| r.weights).chain(std::iter::once(self.default))
    }
}

/// The split to simulate when there may be no route object (yet): with
/// neither a route nor the apex Service (whose selector decides when it
/// exists), all traffic reaches the primary if it exists, else the target,
/// which is what the Canary's Service selects before petrel takes over.
pub fn effective_split(route: Option<Split>, primary_exists: bool) -> Split {
    route.unwrap_or_else(|| Split::all_to(if primary_exists { Side::Primary } else { Side::Canary }))
}

/// The requests an app sends, independent of where they go.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficProfile {
    /// Requests per second entering the route.
    pub requests_per_second: f64,
    /// Fraction (0–1) of requests that carry [`TrafficProfile::match_headers`].
    pub header_fraction: f64,
    /// Headers (lowercase names) carried by that fraction of requests, e.g.
    /// the A/B header a Canary's `analysis.match` selects on.
    pub match_headers: BTreeMap<String, String>,
}

impl Default for TrafficProfile {
    fn default() -> Self {
        TrafficProfile { requests_per_second: 50.0, header_fraction: 0.0, match_headers: BTreeMap::new() }
    }
}

/// Requests dealt out in one step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dispatch {
    /// Requests served by the primary.
    pub primary: u64,
    /// Requests served by the canary, mirrored copies excluded.
    pub canary: u64,
    /// Copies of primary requests mirrored to the canary.
    pub mirrored: u64,
    /// Requests no workload served (weight on unknown backends, or no rule).
    pub unrouted: u64,
}

impl Dispatch {
    /// Requests served by `side`, including mirrored copies.
    pub fn served_by(&self, side: Side) -> u64 {
        match side {
            Side::Primary => self.primary,
            Side::Canary => self.canary + self.mirrored,
        }
    }
}

/// Deals requests out deterministically, carrying fractions over between
/// steps (so 50 req/s at 10% canary is exactly 5 req/s to the canary over
/// time, not 5 on average).
#[derive(Debug, Clone, Default)]
pub struct Dispatcher {
    /// Fractional requests owed, per (header class, destination).
    owed: BTreeMap<(bool, Destination), f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Destination {
    Primary,
    Canary,
    Mirror,
    Unrouted,
}

impl Dispatcher {
    /// The requests of `elapsed` time of `profile` traffic through `split`.
    pub fn step(&mut self, split: &Split, profile: &TrafficProfile, elapsed: Duration) -> Dispatch {
        let total = profile.requests_per_second.max(0.0) * elapsed.as_secs_f64();
        let with_headers = profile.header_fraction.clamp(0.0, 1.0);
        let no_headers = BTreeMap::new();
        let mut out = Dispatch::default();
        for (class, fraction, headers) in
            [(true, with_headers, &profile.match_headers), (false, 1.0 - with_headers, &no_headers)]
        {
            let requests = total * fraction;
            if requests <= 0.0 {
                continue;
            }
            let rule = split.header_rule_for(headers);
            let shares = shares(&rule.map_or(split.default, |r| r.weights));
            // Mirroring is configured on the default rule only.
            let mirror = match rule {
                None => f64::from(split.mirror_percent.unwrap_or(0).min(100)) / 100.0,
                Some(_) => 0.0,
            };
            let mut take = |dest: Destination, amount: f64| -> u64 {
                let owed = self.owed.entry((class, dest)).or_insert(0.0);
                *owed += amount;
                let whole = owed.floor();
                *owed -= whole;
                whole as u64
            };
            out.primary += take(Destination::Primary, requests * shares.0);
            out.canary += take(Destination::Canary, requests * shares.1);
            out.unrouted += take(Destination::Unrouted, requests * shares.2);
            out.mirrored += take(Destination::Mirror, requests * shares.0 * mirror);
        }
        out
    }
}

/// The side a request lands on for a `draw` uniform in [0, 1): primary, canary and
/// unknown backends each take their weight's share of the interval.
fn pick(weights: &Weights, draw: f64) -> Option<Side> {
    let total = f64::from(weights.total());
    let at = draw.clamp(0.0, 1.0 - f64::EPSILON) * total;
    if at < f64::from(weights.primary) {
        Some(Side::Primary)
    } else if at < f64::from(weights.primary + weights.canary) {
        Some(Side::Canary)
    } else {
        None
    }
}

/// (primary, canary, lost) fractions of a rule's requests.
fn shares(weights: &Weights) -> (f64, f64, f64) {
    let total = weights.total();
    if total == 0 {
        return (0.0, 0.0, 1.0);
    }
    let total = f64::from(total);
    (f64::from(weights.primary) / total, f64::from(weights.canary) / total, f64::from(weights.other) / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(rps: f64) -> TrafficProfile {
        TrafficProfile { requests_per_second: rps, ..TrafficProfile::default() }
    }

    #[test]
    fn classifies_generated_service_names_and_hosts() {
        assert_eq!(classify_backend("podinfo-primary", "podinfo"), Some(Side::Primary));
        assert_eq!(classify_backend("podinfo-canary", "podinfo"), Some(Side::Canary));
        assert_eq!(classify_backend("podinfo-canary.test.svc.cluster.local", "podinfo"), Some(Side::Canary));
        assert_eq!(classify_backend("podinfo", "podinfo"), None);
        assert_eq!(classify_backend("other-primary", "podinfo"), None);
        assert_eq!(classify_backend("podinfoprimary", "podinfo"), None);
    }

    #[test]
    fn dispatch_follows_weights_exactly_over_time() {
        let mut d = Dispatcher::default();
        let split = Split::weighted(90, 10);
        let mut sum = Dispatch::default();
        for _ in 0..40 {
            let step = d.step(&split, &profile(50.0), Duration::from_millis(250));
            sum.primary += step.primary;
            sum.canary += step.canary;
            sum.unrouted += step.unrouted;
        }
        // 10 s at 50 req/s.
        assert_eq!(sum.canary, 50);
        assert!((449..=450).contains(&sum.primary), "{sum:?}");
        assert_eq!(sum.unrouted, 0);
    }

    #[test]
    fn header_rule_routes_only_matching_requests() {
        let split = Split {
            header_rules: vec![HeaderRule::new(
                vec![HeaderMatch::new("X-Canary", HeaderValueMatch::Exact("insider".into()))],
                Weights::ALL_CANARY,
            )],
            default: Weights::ALL_PRIMARY,
            ..Split::default()
        };
        let mut p = profile(100.0);
        p.header_fraction = 0.2;
        p.match_headers.insert("x-canary".into(), "insider".into());
        let step = Dispatcher::default().step(&split, &p, Duration::from_secs(10));
        assert_eq!(step.canary, 200);
        assert_eq!(step.primary, 800);

        p.match_headers.insert("x-canary".into(), "outsider".into());
        let step = Dispatcher::default().step(&split, &p, Duration::from_secs(10));
        assert_eq!(step.canary, 0);
        assert_eq!(step.primary, 1000);
    }

    #[test]
    fn regex_header_match_is_anchored() {
        let m = HeaderMatch::new("cookie", HeaderValueMatch::Regex(".*canary.*".into()));
        let mut h = BTreeMap::new();
        h.insert("cookie".to_owned(), "a=1; canary=always".to_owned());
        assert!(m.matches(&h));
        let m = HeaderMatch::new("x", HeaderValueMatch::Regex("ab".into()));
        h.insert("x".to_owned(), "xaby".to_owned());
        assert!(!m.matches(&h));
    }

    #[test]
    fn mirror_copies_primary_requests() {
        let split = Split { mirror_percent: Some(50), ..Split::all_to(Side::Primary) };
        let step = Dispatcher::default().step(&split, &profile(10.0), Duration::from_secs(10));
        assert_eq!(step.primary, 100);
        assert_eq!(step.canary, 0);
        assert_eq!(step.mirrored, 50);
        assert_eq!(step.served_by(Side::Canary), 50);
    }

    #[test]
    fn zero_weights_and_unknown_backends_are_lost() {
        let step = Dispatcher::default().step(&Split::default(), &profile(10.0), Duration::from_secs(1));
        assert_eq!(step, Dispatch { unrouted: 10, ..Dispatch::default() });
        let split = Split { default: Weights { primary: 50, canary: 0, other: 50 }, ..Split::default() };
        let step = Dispatcher::default().step(&split, &profile(10.0), Duration::from_secs(1));
        assert_eq!((step.primary, step.unrouted), (5, 5));
    }

    #[test]
    fn no_route_means_primary_or_target() {
        assert_eq!(effective_split(None, true), Split::all_to(Side::Primary));
        assert_eq!(effective_split(None, false), Split::all_to(Side::Canary));
        assert_eq!(effective_split(Some(Split::weighted(1, 2)), true), Split::weighted(1, 2));
    }
}
