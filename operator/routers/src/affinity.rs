//! `analysis.sessionAffinity` (cookie pinning), as Flagger's istio and gatewayapi routers
//! write it, decided here once for both.
//!
//! While the canary has weight, the weighted route adds `Set-Cookie: <name>=<value>;
//! Max-Age=<maxAge>` to the canary's responses, and a sticky route before it sends every
//! request whose `Cookie` header carries that cookie to the canary (primary 0, canary 100).
//! With `primaryCookieName`, the primary's responses set a second cookie (for one analysis
//! interval, as Flagger does) and a second sticky route keeps those requests on the
//! primary. Once the canary weight is back to 0 (promotion or rollback), a route matching
//! the last canary cookie sends those requests where the weighted route does and expires
//! the cookie (`Max-Age=-1`).
//!
//! The cookie values live in the Canary's status (`sessionAffinityCookie`,
//! `previousSessionAffinityCookie`, `primarySessionAffinityCookie`), chosen by the
//! reconciler once per release ([`next_cookies`], with the value from the I/O shell), so
//! that the routes built from them are the same at every reconcile.

use petrel_api::Canary;
use petrel_api::canary::{CanarySpec, CanaryStatus, SessionAffinity};

use super::{Weights, regex_escape};

/// Flagger's default cookie name.
pub const DEFAULT_COOKIE_NAME: &str = "flagger-cookie";
/// Flagger's default `Max-Age` of the canary cookie: a day.
pub const DEFAULT_MAX_AGE: i64 = 86_400;
/// The request header sticky routes match.
pub const COOKIE_HEADER: &str = "Cookie";
/// The response header the routes add.
pub const SET_COOKIE_HEADER: &str = "Set-Cookie";
/// Characters of a generated cookie value (lowercase hex).
pub const COOKIE_VALUE_LEN: usize = 16;

pub use crate::options::{session_affinity_refusal as refusal, supports_session_affinity};

fn affinity_of(spec: &CanarySpec) -> Option<&SessionAffinity> {
    spec.analysis.as_ref().and_then(|a| a.session_affinity.as_ref())
}

fn cookie_name(affinity: &SessionAffinity) -> &str {
    affinity.cookie_name.as_deref().filter(|n| !n.is_empty()).unwrap_or(DEFAULT_COOKIE_NAME)
}

fn primary_cookie_name(affinity: &SessionAffinity) -> Option<&str> {
    affinity.primary_cookie_name.as_deref().filter(|n| !n.is_empty())
}

/// One cookie as stored in the status: `<name>=<value>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
}

impl Cookie {
    /// A stored `<name>=<value>`; `None` for anything else (an empty name or value).
    pub fn parse(stored: &str) -> Option<Cookie> {
        let (name, value) = stored.split_once('=')?;
        (!name.is_empty() && !value.is_empty()).then(|| Cookie { name: name.into(), value: value.into() })
    }

    /// As stored in the status.
    pub fn stored(&self) -> String {
        format!("{}={}", self.name, self.value)
    }

    /// The `Set-Cookie` value that sets it for `max_age` seconds (-1 expires it).
    pub fn set_cookie(&self, max_age: i64) -> String {
        format!("{}={}; Max-Age={max_age}", self.name, self.value)
    }

    /// The regular expression a `Cookie` request header carrying it matches.
    pub fn header_regex(&self) -> String {
        format!(".*{}={}.*", regex_escape(&self.name), regex_escape(&self.value))
    }
}

/// The cookie fields of the status.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cookies {
    pub canary: Option<String>,
    pub previous: Option<String>,
    pub primary: Option<String>,
}

impl Cookies {
    pub fn of(status: Option<&CanaryStatus>) -> Cookies {
        status.map_or_else(Cookies::default, |s| Cookies {
            canary: s.session_affinity_cookie.clone(),
            previous: s.previous_session_affinity_cookie.clone(),
            primary: s.primary_session_affinity_cookie.clone(),
        })
    }

    pub fn write_into(self, status: &mut CanaryStatus) {
        status.session_affinity_cookie = self.canary;
        status.previous_session_affinity_cookie = self.previous;
        status.primary_session_affinity_cookie = self.primary;
    }
}

/// A stored cookie still valid for `name` (the name may have changed in the spec).
fn kept(stored: &Option<String>, name: &str) -> Option<String> {
    stored.as_deref().and_then(Cookie::parse).filter(|c| c.name == name).map(|c| c.stored())
}

/// The cookies after the routes are set to `canary_weight`, as Flagger keeps them: with
/// canary weight, the release's canary cookie (a new one from `fresh` when there is none
/// yet) and, with `primaryCookieName`, its primary cookie; at weight 0, the canary cookie
/// becomes the previous one (which the routes then expire) and the primary cookie goes.
/// Without session affinity the cookies are left as they are.
pub fn next_cookies(
    spec: &CanarySpec,
    stored: &Cookies,
    canary_weight: u8,
    mut fresh: impl FnMut() -> String,
) -> Cookies {
    let Some(affinity) = affinity_of(spec) else {
        return stored.clone();
    };
    if canary_weight == 0 {
        return Cookies { canary: None, previous: stored.canary.clone().or(stored.previous.clone()), primary: None };
    }
    let name = cookie_name(affinity);
    let canary = kept(&stored.canary, name).unwrap_or_else(|| format!("{name}={}", fresh()));
    let primary = primary_cookie_name(affinity)
        .map(|name| kept(&stored.primary, name).unwrap_or_else(|| format!("{name}={}", fresh())));
    Cookies { canary: Some(canary), previous: stored.previous.clone(), primary }
}

/// What the routers write for session affinity at some weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sticky {
    /// No session affinity, or none to write (no canary weight and no cookie to expire).
    Off,
    /// The canary has weight: pin sessions.
    Pin {
        /// Set on the canary's responses of the weighted route; requests carrying it go to
        /// the canary.
        canary: Cookie,
        /// `Set-Cookie` value on the canary's responses.
        canary_set_cookie: String,
        /// With `primaryCookieName`: set on the primary's responses; requests carrying it
        /// go to the primary.
        primary: Option<(Cookie, String)>,
    },
    /// The canary has no weight: requests carrying the last canary cookie go where the
    /// weighted route sends them, and their responses expire it.
    Expire { cookie: Cookie, set_cookie: String },
}

/// The session affinity routes for `weights`, from the spec and the cookies in the status
/// (see [`next_cookies`]). With canary weight but no cookie in the status yet (routes
/// rebuilt before the first `set_routes` wrote one), nothing is pinned.
pub fn sticky(canary: &Canary, weights: Weights) -> Sticky {
    let Some(affinity) = affinity_of(&canary.spec) else {
        return Sticky::Off;
    };
    let cookies = Cookies::of(canary.status.as_ref());
    if weights.canary() == 0 {
        return match cookies.canary.as_deref().or(cookies.previous.as_deref()).and_then(Cookie::parse) {
            Some(cookie) => Sticky::Expire { set_cookie: cookie.set_cookie(-1), cookie },
            None => Sticky::Off,
        };
    }
    let Some(cookie) = kept(&cookies.canary, cookie_name(affinity)).as_deref().and_then(Cookie::parse) else {
        return Sticky::Off;
    };
    let primary = primary_cookie_name(affinity)
        .and_then(|name| kept(&cookies.primary, name))
        .as_deref()
        .and_then(Cookie::parse)
        .map(|c| {
            // Flagger: the primary cookie lasts one analysis interval.
            let interval = petrel_core::strategy::analysis_interval(&canary.spec).as_secs().max(1);
            let max_age = i64::try_from(interval).unwrap_or(i64::MAX);
            (c.clone(), c.set_cookie(max_age))
        });
    let max_age = affinity.max_age.unwrap_or(DEFAULT_MAX_AGE);
    Sticky::Pin { canary_set_cookie: cookie.set_cookie(max_age), canary: cookie, primary }
}

/// Whether `regex` (a `Cookie` header match) has the shape [`Cookie::header_regex`]
/// writes for a generated value, so that reading the weights back can tell petrel's
/// sticky rules from the weighted one.
pub fn is_sticky_regex(regex: &str) -> bool {
    let Some(inner) = regex.strip_prefix(".*").and_then(|r| r.strip_suffix(".*")) else {
        return false;
    };
    let Some((name, value)) = inner.rsplit_once('=') else {
        return false;
    };
    !name.is_empty()
        && value.len() == COOKIE_VALUE_LEN
        && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::super::testing::{canary, weights};
    use super::*;
    use petrel_api::canary::SessionAffinity;
    use petrel_core::Provider;

    fn values() -> impl FnMut() -> String {
        let mut n = 0u32;
        move || {
            n += 1;
            format!("{n:016x}")
        }
    }

    fn with_affinity(primary: Option<&str>) -> Canary {
        let mut canary = canary();
        canary.spec.analysis.as_mut().unwrap().session_affinity = Some(SessionAffinity {
            cookie_name: Some("canary-cookie".into()),
            primary_cookie_name: primary.map(String::from),
            max_age: Some(600),
        });
        canary
    }

    fn with_cookies(mut canary: Canary, cookies: Cookies) -> Canary {
        let mut status = CanaryStatus::default();
        cookies.write_into(&mut status);
        canary.status = Some(status);
        canary
    }

    #[test]
    fn a_release_gets_one_cookie_kept_until_its_end_then_expired() {
        let spec = with_affinity(None).spec;
        let start = next_cookies(&spec, &Cookies::default(), 10, values());
        assert_eq!(start, Cookies { canary: Some("canary-cookie=0000000000000001".into()), ..Cookies::default() });
        // Later steps keep it: the routes do not change but for the weights.
        let mid = next_cookies(&spec, &start, 30, || unreachable!("no new cookie mid-release"));
        assert_eq!(mid, start);
        // Promotion or rollback: the cookie becomes the previous one.
        let end = next_cookies(&spec, &mid, 0, || unreachable!());
        assert_eq!(end, Cookies { previous: start.canary.clone(), ..Cookies::default() });
        assert_eq!(next_cookies(&spec, &end, 0, || unreachable!()), end);
        // The next release gets a new one; the previous stays until that release ends.
        let next = next_cookies(&spec, &end, 5, || "00000000000000ff".into());
        assert_eq!(next.canary.as_deref(), Some("canary-cookie=00000000000000ff"));
        assert_eq!(next.previous, start.canary);
    }

    #[test]
    fn a_renamed_cookie_is_replaced_and_without_affinity_nothing_changes() {
        let spec = with_affinity(Some("primary-cookie")).spec;
        let stored = Cookies { canary: Some("old-name=0000000000000001".into()), ..Cookies::default() };
        let next = next_cookies(&spec, &stored, 10, values());
        assert_eq!(next.canary.as_deref(), Some("canary-cookie=0000000000000001"));
        assert_eq!(next.primary.as_deref(), Some("primary-cookie=0000000000000002"));
        assert_eq!(next_cookies(&canary().spec, &stored, 10, values()), stored);
    }

    #[test]
    fn pinning_only_while_the_canary_has_weight() {
        let pinned = with_cookies(
            with_affinity(Some("primary-cookie")),
            Cookies {
                canary: Some("canary-cookie=0123456789abcdef".into()),
                primary: Some("primary-cookie=fedcba9876543210".into()),
                previous: Some("canary-cookie=1111111111111111".into()),
            },
        );
        let Sticky::Pin { canary: pinned_cookie, canary_set_cookie, primary } = sticky(&pinned, weights(90, 10, false))
        else {
            panic!("not pinned")
        };
        assert_eq!(pinned_cookie.header_regex(), ".*canary-cookie=0123456789abcdef.*");
        assert_eq!(canary_set_cookie, "canary-cookie=0123456789abcdef; Max-Age=600");
        // The primary cookie lasts one analysis interval (1m).
        assert_eq!(primary.unwrap().1, "primary-cookie=fedcba9876543210; Max-Age=60");
        // At weight 0, the current (else the previous) canary cookie is expired.
        assert_eq!(
            sticky(&pinned, weights(100, 0, false)),
            Sticky::Expire {
                cookie: Cookie::parse("canary-cookie=0123456789abcdef").unwrap(),
                set_cookie: "canary-cookie=0123456789abcdef; Max-Age=-1".into()
            }
        );
        let after = with_cookies(
            with_affinity(None),
            Cookies { previous: Some("canary-cookie=1111111111111111".into()), ..Cookies::default() },
        );
        assert!(
            matches!(sticky(&after, weights(100, 0, false)), Sticky::Expire { set_cookie, .. } if set_cookie == "canary-cookie=1111111111111111; Max-Age=-1")
        );
        // Weight without a cookie yet, no affinity, or nothing to expire: nothing written.
        assert_eq!(sticky(&after, weights(90, 10, false)), Sticky::Off);
        assert_eq!(sticky(&with_affinity(None), weights(100, 0, false)), Sticky::Off);
        assert_eq!(sticky(&canary(), weights(90, 10, false)), Sticky::Off);
        // Default name and max age.
        let mut defaults = with_cookies(
            canary(),
            Cookies { canary: Some("flagger-cookie=0123456789abcdef".into()), ..Cookies::default() },
        );
        defaults.spec.analysis.as_mut().unwrap().session_affinity = Some(SessionAffinity::default());
        assert!(
            matches!(sticky(&defaults, weights(50, 50, false)), Sticky::Pin { canary_set_cookie, primary: None, .. } if canary_set_cookie == "flagger-cookie=0123456789abcdef; Max-Age=86400")
        );
    }

    #[test]
    fn cookie_names_are_escaped_and_sticky_regexes_recognised() {
        let cookie = Cookie::parse("my.cookie=0123456789abcdef").unwrap();
        assert_eq!(cookie.header_regex(), r".*my\.cookie=0123456789abcdef.*");
        assert!(is_sticky_regex(&cookie.header_regex()));
        // A user's A/B cookie condition is not taken for a sticky rule.
        assert!(!is_sticky_regex("^(.*?;)?(canary=always)(;.*)?$"));
        assert!(!is_sticky_regex(".*canary=always.*"));
        assert!(Cookie::parse("novalue=").is_none() && Cookie::parse("plain").is_none());
    }

    #[test]
    fn only_istio_and_gateway_api_pin_sessions() {
        let canary = with_affinity(None);
        assert!(refusal(&canary, Provider::Istio).is_none());
        assert!(refusal(&canary, Provider::GatewayApi).is_none());
        let message = refusal(&canary, Provider::Nginx).unwrap();
        assert!(message.contains("not by provider nginx"), "{message}");
        assert!(refusal(&super::super::testing::canary(), Provider::Nginx).is_none());
    }

    #[test]
    fn an_empty_session_affinity_block_asks_for_the_default_cookie() {
        // `sessionAffinity: {}` is Flagger's shortest way to ask for pinning: the default
        // cookie on istio and gatewayapi, refused on every other provider.
        let mut canary = super::super::testing::canary();
        canary.spec.analysis = Some(serde_json::from_value(serde_json::json!({ "sessionAffinity": {} })).unwrap());
        assert!(refusal(&canary, Provider::Kubernetes).is_some_and(|m| m.contains("not by provider kubernetes")));
        assert!(refusal(&canary, Provider::Istio).is_none());
        let affinity = affinity_of(&canary.spec).expect("an empty block is still a request");
        assert_eq!(cookie_name(affinity), DEFAULT_COOKIE_NAME);
    }
}
