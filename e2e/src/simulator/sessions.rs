//! Clients that keep the cookies they are given: what session affinity needs to be seen.
//!
//! The anonymous traffic of a [`super::TrafficProfile`] is dealt out in bulk by the
//! [`super::Dispatcher`] and never carries a cookie. A [`SessionPool`] is a fixed set of
//! simulated clients (browsers, say), each with a [`CookieJar`]: every request sends the
//! jar's live cookies in a `Cookie` header, the route decides it one request at a time
//! ([`Split::route`], the same header matching as A/B rules), and the response's
//! `Set-Cookie` values go back into the jar. Every request is logged per session, so a
//! test can check what a real client would live through: once on the canary, always on
//! the canary while its cookie lives, and back on the primary once the cookie is expired.
//!
//! What is modelled of a cookie (RFC 6265, section 5.2): `name=value` and `Max-Age`
//! (a positive number of seconds: it expires then; zero or negative: it is deleted at
//! once; absent: kept for the session's life). Not modelled, as petrel and Flagger write
//! none of them: `Expires` (dates), `Domain`, `Path`, `Secure`, `HttpOnly`, `SameSite`;
//! every simulated request goes to the same host and path.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::split::{Dispatch, Side, Split, Weights};

/// The cookies one client keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CookieJar {
    /// By name: the value and when it expires (session clock; `None`: never).
    cookies: BTreeMap<String, (String, Option<Duration>)>,
}

impl CookieJar {
    /// Takes a `Set-Cookie` value received at `now`; one without `name=` is ignored, as
    /// a browser does.
    pub fn receive(&mut self, set_cookie: &str, now: Duration) {
        let Some((name, value, max_age)) = parse_set_cookie(set_cookie) else {
            return;
        };
        match max_age {
            Some(seconds) if seconds <= 0 => {
                self.cookies.remove(name);
            }
            Some(seconds) => {
                let expires = now + Duration::from_secs(seconds.unsigned_abs());
                self.cookies.insert(name.to_owned(), (value.to_owned(), Some(expires)));
            }
            None => {
                self.cookies.insert(name.to_owned(), (value.to_owned(), None));
            }
        }
    }

    /// The live cookies at `now`, as `name=value`; expired ones are dropped.
    pub fn live(&mut self, now: Duration) -> Vec<String> {
        self.cookies.retain(|_, (_, expires)| expires.is_none_or(|at| at > now));
        self.cookies.iter().map(|(name, (value, _))| format!("{name}={value}")).collect()
    }
}

/// How a pool's clients behave.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionProfile {
    /// How many clients.
    pub sessions: usize,
    /// Requests per second of all of them together, dealt round-robin.
    pub requests_per_second: f64,
    /// Headers (lowercase names) every request carries besides its cookies.
    pub headers: BTreeMap<String, String>,
}

impl SessionProfile {
    /// `sessions` clients sending `requests_per_second` together, with no other header.
    pub fn new(sessions: usize, requests_per_second: f64) -> Self {
        SessionProfile { sessions, requests_per_second, headers: BTreeMap::new() }
    }
}

/// One request of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRequest {
    /// When, on the pool's clock (time since it started).
    pub at: Duration,
    /// The cookies it carried, `name=value`.
    pub cookies: Vec<String>,
    /// Weights of the route rule that decided it.
    pub weights: Weights,
    /// Who served it (`None`: no workload).
    pub side: Option<Side>,
    /// `Set-Cookie` values of its response.
    pub set_cookies: Vec<String>,
}

impl SessionRequest {
    /// Whether it carried `cookie` (`name=value`).
    pub fn carried(&self, cookie: &str) -> bool {
        self.cookies.iter().any(|c| c == cookie)
    }

    /// Whether its response set `cookie` (`name=value`) for a while (a positive
    /// `Max-Age`, or none).
    pub fn was_given(&self, cookie: &str) -> bool {
        self.set_cookies
            .iter()
            .filter_map(|set| parse_set_cookie(set))
            .any(|(name, value, max_age)| is(cookie, name, value) && max_age.is_none_or(|s| s > 0))
    }

    /// Whether its response expired the cookie named like `cookie` (`Max-Age` 0 or less).
    pub fn expired(&self, cookie: &str) -> bool {
        let wanted = cookie.split_once('=').map_or(cookie, |(name, _)| name);
        self.set_cookies
            .iter()
            .filter_map(|set| parse_set_cookie(set))
            .any(|(name, _, max_age)| name == wanted && max_age.is_some_and(|s| s <= 0))
    }
}

fn is(cookie: &str, name: &str, value: &str) -> bool {
    cookie.split_once('=') == Some((name, value))
}

/// A `Set-Cookie` value's name, value and `Max-Age` (the last one that is an integer;
/// others are ignored); `None` without a `name=`.
fn parse_set_cookie(set_cookie: &str) -> Option<(&str, &str, Option<i64>)> {
    let mut parts = set_cookie.split(';');
    let (name, value) = parts.next()?.split_once('=')?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let max_age = parts
        .filter_map(|attribute| attribute.split_once('='))
        .filter(|(key, _)| key.trim().eq_ignore_ascii_case("max-age"))
        .filter_map(|(_, seconds)| seconds.trim().parse::<i64>().ok())
        .next_back();
    Some((name, value.trim(), max_age))
}

/// What one session did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionLog {
    /// Its number in the pool.
    pub index: usize,
    /// Its requests, in order.
    pub requests: Vec<SessionRequest>,
    /// Its live cookies now.
    pub jar: Vec<String>,
}

struct Session {
    jar: CookieJar,
    random: SplitMix64,
    requests: Vec<SessionRequest>,
}

/// A fixed set of cookie-keeping clients sending requests through a split.
pub struct SessionPool {
    profile: SessionProfile,
    sessions: Vec<Session>,
    /// Time since the pool started: the clock cookies expire by.
    clock: Duration,
    /// Fractional requests owed, so the rate is exact over time.
    owed: f64,
    /// The session sending the next request.
    next: usize,
}

impl SessionPool {
    /// `profile.sessions` clients with empty jars; each draws its backends from its own
    /// deterministic random sequence (seeded by its number), so runs are repeatable.
    pub fn new(profile: SessionProfile) -> Self {
        let sessions = (0..profile.sessions)
            .map(|i| Session { jar: CookieJar::default(), random: SplitMix64(i as u64 + 1), requests: Vec::new() })
            .collect();
        SessionPool { profile, sessions, clock: Duration::ZERO, owed: 0.0, next: 0 }
    }

    /// The requests of `elapsed` more time through `split`, one at a time, round-robin
    /// over the sessions: each carries its session's live cookies, and its response's
    /// cookies go back into the jar. Returns where they went, for the workloads to serve.
    pub fn step(&mut self, split: &Split, elapsed: Duration) -> Dispatch {
        self.clock += elapsed;
        let mut out = Dispatch::default();
        if self.sessions.is_empty() {
            return out;
        }
        self.owed += self.profile.requests_per_second.max(0.0) * elapsed.as_secs_f64();
        let requests = self.owed.floor();
        self.owed -= requests;
        for _ in 0..requests as u64 {
            let session = &mut self.sessions[self.next];
            self.next = (self.next + 1) % self.profile.sessions;
            let cookies = session.jar.live(self.clock);
            let mut headers = self.profile.headers.clone();
            if !cookies.is_empty() {
                let mut header = headers.remove("cookie").into_iter().collect::<Vec<_>>();
                header.extend(cookies.iter().cloned());
                headers.insert("cookie".to_owned(), header.join("; "));
            }
            let routed = split.route(&headers, || session.random.next_f64());
            for set_cookie in &routed.set_cookies {
                session.jar.receive(set_cookie, self.clock);
            }
            match routed.side {
                Some(Side::Primary) => out.primary += 1,
                Some(Side::Canary) => out.canary += 1,
                None => out.unrouted += 1,
            }
            out.mirrored += u64::from(routed.mirrored);
            session.requests.push(SessionRequest {
                at: self.clock,
                cookies,
                weights: routed.weights,
                side: routed.side,
                set_cookies: routed.set_cookies,
            });
        }
        out
    }

    /// Every session's requests and live cookies.
    pub fn logs(&mut self) -> Vec<SessionLog> {
        let now = self.clock;
        self.sessions
            .iter_mut()
            .enumerate()
            .map(|(index, s)| SessionLog { index, requests: s.requests.clone(), jar: s.jar.live(now) })
            .collect()
    }
}

/// A small deterministic random sequence (SplitMix64): no dependency, the same draws
/// every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // The top 53 bits as a fraction in [0, 1).
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What sessions lived through with one release's cookies: the facts a test of session
/// affinity asserts on, read from the logs alone (which cookie each request carried,
/// who served it, what its response set).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AffinityReport {
    /// Sessions in the logs.
    pub sessions: usize,
    /// Sessions given the canary cookie.
    pub pinned: usize,
    /// Requests carrying the canary cookie, those whose response expired it excluded.
    pub pinned_requests: u64,
    /// Of those, served by something else than the canary: 0 when affinity holds.
    pub pinned_elsewhere: u64,
    /// Pinned sessions whose canary cookie a response expired.
    pub expired: usize,
    /// Requests whose response expired the canary cookie that the primary did not serve.
    pub expiring_elsewhere: u64,
    /// Requests carrying the canary cookie after a response expired it (the jar kept a
    /// deleted cookie) or before any response gave it: 0.
    pub carried_unexplained: u64,
    /// Requests carrying the primary cookie (with `primaryCookieName`).
    pub primary_pinned_requests: u64,
    /// Of those, served by something else than the primary: 0.
    pub primary_pinned_elsewhere: u64,
    /// Requests carrying neither cookie while their rule gave the canary weight.
    pub unpinned_requests: u64,
    /// Of those, served by the canary.
    pub unpinned_to_canary: u64,
    /// Of those, how many the canary should serve by their rules' weights (the sum of
    /// each one's canary share), and the variance of that count.
    pub unpinned_expected_canary: f64,
    pub unpinned_variance: f64,
}

impl AffinityReport {
    /// The sessions' requests (from `logs`) with the canary cookie `canary` (`name=value`)
    /// and, with `primaryCookieName`, the primary cookie `primary`.
    pub fn of(logs: &[SessionLog], canary: &str, primary: Option<&str>) -> AffinityReport {
        let mut report = AffinityReport { sessions: logs.len(), ..AffinityReport::default() };
        for log in logs {
            let (mut given, mut expired) = (false, false);
            for request in &log.requests {
                if request.carried(canary) {
                    if !given || expired {
                        report.carried_unexplained += 1;
                    }
                    if request.expired(canary) {
                        report.expiring_elsewhere += u64::from(request.side != Some(Side::Primary));
                    } else {
                        report.pinned_requests += 1;
                        report.pinned_elsewhere += u64::from(request.side != Some(Side::Canary));
                    }
                } else if primary.is_some_and(|p| request.carried(p)) {
                    report.primary_pinned_requests += 1;
                    report.primary_pinned_elsewhere += u64::from(request.side != Some(Side::Primary));
                } else if request.weights.canary > 0 {
                    let share = f64::from(request.weights.canary) / f64::from(request.weights.total());
                    report.unpinned_requests += 1;
                    report.unpinned_to_canary += u64::from(request.side == Some(Side::Canary));
                    report.unpinned_expected_canary += share;
                    report.unpinned_variance += share * (1.0 - share);
                }
                if request.was_given(canary) {
                    given = true;
                    expired = false;
                }
                if request.expired(canary) && given {
                    expired = true;
                }
            }
            report.pinned += usize::from(given);
            report.expired += usize::from(given && expired);
        }
        report
    }

    /// Whether the canary share of the unpinned requests is the weights' within `sigmas`
    /// standard deviations (plus one request).
    pub fn unpinned_follow_the_weights(&self, sigmas: f64) -> bool {
        let off = (self.unpinned_to_canary as f64 - self.unpinned_expected_canary).abs();
        off <= sigmas * self.unpinned_variance.sqrt() + 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::super::routes::tests::petrel_fixture;
    use super::super::routes::{Provider, parse_route};
    use super::*;

    const CANARY: &str = "canary-cookie=0123456789abcdef";
    const PRIMARY: &str = "primary-cookie=fedcba9876543210";
    const SECOND: Duration = Duration::from_secs(1);

    fn split(provider: Provider, file: &str) -> Split {
        parse_route(provider, &petrel_fixture(file), "podinfo").unwrap()
    }

    /// The sessions' headers the fixture's weighted route needs (Istio's matches
    /// `x-tenant: blue`, from the Canary's service.match).
    fn profile(provider: Provider) -> SessionProfile {
        let mut profile = SessionProfile::new(40, 40.0);
        if provider == Provider::Istio {
            profile.headers.insert("x-tenant".into(), "blue".into());
        }
        profile
    }

    #[test]
    fn a_jar_keeps_cookies_for_their_max_age_and_deletes_expired_ones() {
        let mut jar = CookieJar::default();
        let at = |s: u64| Duration::from_secs(s);
        jar.receive("a=1; Max-Age=10", at(0));
        jar.receive("b=2", at(0));
        jar.receive("c=3; Path=/; max-age=abc", at(0));
        jar.receive("=nameless", at(0));
        jar.receive("no-value-separator", at(0));
        assert_eq!(jar.live(at(9)), ["a=1", "b=2", "c=3"]);
        assert_eq!(jar.live(at(10)), ["b=2", "c=3"], "Max-Age=10 expires 10 s later");
        jar.receive("b=2; Max-Age=-1", at(11));
        jar.receive("c=3; Max-Age=0", at(11));
        assert!(jar.live(at(11)).is_empty(), "Max-Age 0 or less deletes at once");
        // Setting it again replaces the value and the expiry.
        jar.receive("a=1; Max-Age=5", at(20));
        jar.receive("a=2; Max-Age=60", at(21));
        assert_eq!(jar.live(at(30)), ["a=2"]);
    }

    #[test]
    fn a_session_given_the_canary_cookie_stays_on_the_canary_until_it_is_expired() {
        for (provider, pinned, expired) in [
            (Provider::Istio, "istio_sticky", "istio_sticky_expired"),
            (Provider::GatewayApi, "gatewayapi_sticky", "gatewayapi_sticky_expired"),
        ] {
            let mut pool = SessionPool::new(profile(provider));
            // 30 s at 90/10: every session draws a side until a cookie pins it (the
            // primary cookie lasts 60 s, so sessions on the primary stay there too).
            let during = split(provider, pinned);
            for _ in 0..30 {
                pool.step(&during, SECOND);
            }
            let logs = pool.logs();
            let report = AffinityReport::of(&logs, CANARY, Some(PRIMARY));
            assert!(report.pinned > 0 && report.pinned < 40, "{provider}: {report:?}");
            assert!(report.pinned_requests > 100, "{provider}: {report:?}");
            assert_eq!(report.pinned_elsewhere, 0, "{provider}: {report:?}");
            assert_eq!(report.primary_pinned_elsewhere, 0, "{provider}: {report:?}");
            assert!(report.primary_pinned_requests > 100, "{provider}: {report:?}");
            // Every session is pinned one way or the other after its first request.
            for log in &logs {
                assert!(log.requests[1..].iter().all(|r| !r.cookies.is_empty()), "{provider}: {log:?}");
            }
            // The first requests were split by the weights.
            assert!(report.unpinned_requests >= 40, "{provider}: {report:?}");
            assert!(report.unpinned_follow_the_weights(4.0), "{provider}: {report:?}");

            // The release ends: the next request of each canary session expires its
            // cookie and goes to the primary; none reaches the canary again.
            let after = split(provider, expired);
            let before: Vec<usize> = logs.iter().map(|l| l.requests.len()).collect();
            for _ in 0..3 {
                pool.step(&after, SECOND);
            }
            let logs = pool.logs();
            let report = AffinityReport::of(&logs, CANARY, Some(PRIMARY));
            assert_eq!(report.expired, report.pinned, "{provider}: {report:?}");
            assert_eq!((report.pinned_elsewhere, report.expiring_elsewhere, report.carried_unexplained), (0, 0, 0));
            for (log, before) in logs.iter().zip(before) {
                let later = &log.requests[before..];
                assert!(later.iter().all(|r| r.side == Some(Side::Primary)), "{provider}: {log:?}");
                assert_eq!(
                    later.iter().filter(|r| r.carried(CANARY)).count(),
                    later.iter().filter(|r| r.expired(CANARY)).count()
                );
                assert!(!log.jar.iter().any(|c| c == CANARY), "{provider}: {log:?}");
            }
        }
    }

    #[test]
    fn a_primary_cookie_lasts_its_max_age_then_the_session_draws_again() {
        let mut pool = SessionPool::new(profile(Provider::GatewayApi));
        let during = split(Provider::GatewayApi, "gatewayapi_sticky");
        pool.step(&during, SECOND);
        let on_primary: Vec<usize> =
            pool.logs().iter().filter(|l| l.requests[0].was_given(PRIMARY)).map(|l| l.index).collect();
        assert!(!on_primary.is_empty());
        // Given at 1 s with Max-Age=60: at 60 s it still pins them, at 61 s it is gone.
        pool.step(&during, Duration::from_secs(59));
        let logs = pool.logs();
        for &i in &on_primary {
            let last = logs[i].requests.last().unwrap();
            assert!(last.carried(PRIMARY) && last.side == Some(Side::Primary), "{:?}", logs[i]);
        }
        pool.step(&during, SECOND);
        let logs = pool.logs();
        for &i in &on_primary {
            let last = logs[i].requests.last().unwrap();
            assert!(!last.carried(PRIMARY), "expired after its Max-Age: {:?}", logs[i]);
            assert_eq!(last.weights, Weights::new(90, 10), "drawn by the weighted rule again");
        }
    }

    #[test]
    fn the_report_catches_a_session_that_left_the_canary() {
        let request = |cookies: &[&str], side, set_cookies: &[&str]| SessionRequest {
            at: Duration::ZERO,
            cookies: cookies.iter().map(|c| c.to_string()).collect(),
            weights: Weights::new(50, 50),
            side: Some(side),
            set_cookies: set_cookies.iter().map(|c| c.to_string()).collect(),
        };
        let given = format!("{CANARY}; Max-Age=600");
        let expire = format!("{CANARY}; Max-Age=-1");
        let log = SessionLog {
            index: 0,
            requests: vec![
                request(&[], Side::Canary, &[&given]),
                request(&[CANARY], Side::Canary, &[]),
                request(&[CANARY], Side::Primary, &[]),
                request(&[CANARY], Side::Primary, &[&expire]),
                request(&[CANARY], Side::Canary, &[]),
                request(&[], Side::Primary, &[]),
            ],
            jar: Vec::new(),
        };
        let report = AffinityReport::of(&[log], CANARY, None);
        assert_eq!(report.pinned, 1);
        assert_eq!(report.pinned_requests, 3);
        assert_eq!(report.pinned_elsewhere, 1, "{report:?}");
        assert_eq!(report.expired, 1);
        assert_eq!(report.carried_unexplained, 1, "a cookie carried after it was deleted: {report:?}");
        assert_eq!((report.unpinned_requests, report.unpinned_to_canary), (2, 1));
    }

    #[test]
    fn round_robin_at_the_configured_rate() {
        let mut pool = SessionPool::new(SessionProfile::new(4, 10.0));
        for _ in 0..4 {
            pool.step(&Split::weighted(100, 0), Duration::from_millis(250));
        }
        let logs = pool.logs();
        let counts: Vec<usize> = logs.iter().map(|l| l.requests.len()).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
    }
}
