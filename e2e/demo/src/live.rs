//! Reading the fleet for the live view: the hub's Rollout and Events, each
//! member's Canary and Events; and the loop that redraws the view every
//! second (or prints what changed).

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams};
use petrel::api::Canary;
use petrel::api::canary::CanaryStatus;
use petrel::api::rollout::{Rollout, WavePhase};

use super::view::{self, EventView, MemberRow, Screen, WaveRow};
use super::{APP_NAME, APP_NAMESPACE, Board, Output, print_line};

/// Where the view reads from.
#[derive(Clone)]
pub struct Sources {
    pub hub: Client,
    /// `(namespace, name)` of the Rollout.
    pub rollout: (String, String),
    /// `(member name, client)` in the demo's order (canary cluster first).
    pub members: Vec<(String, Client)>,
}

fn hms(at: DateTime<Utc>) -> String {
    at.format("%H:%M:%S").to_string()
}

fn event_view(e: &Event, source: &str) -> EventView {
    let at = e
        .series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
        .or_else(|| e.deprecated_last_timestamp.as_ref().map(|t| t.0))
        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .map_or(0, |t| t.as_microsecond());
    let time = DateTime::from_timestamp_micros(at).map_or_else(|| "--:--:--".to_owned(), hms);
    EventView {
        source: source.to_owned(),
        at,
        time,
        warning: e.type_.as_deref() == Some("Warning"),
        reason: e.reason.clone().unwrap_or_default(),
        message: e.note.clone().unwrap_or_default().replace('\n', " "),
        count: e.series.as_ref().map_or(e.deprecated_count.unwrap_or(1), |s| s.count),
    }
}

/// Events in `namespace` about objects of `kind`, as seen from `source`.
async fn events(client: &Client, namespace: &str, kind: &str, source: &str) -> Result<Vec<EventView>, kube::Error> {
    let list = Api::<Event>::namespaced(client.clone(), namespace).list(&ListParams::default()).await?;
    Ok(list
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().is_some_and(|r| r.kind.as_deref() == Some(kind)))
        .map(|e| event_view(e, source))
        .collect())
}

/// One member's Canary status (None while it has none) and its Events.
async fn read_member(name: &str, client: &Client) -> (Option<CanaryStatus>, Vec<EventView>) {
    let canary = Api::<Canary>::namespaced(client.clone(), APP_NAMESPACE).get_opt(APP_NAME).await;
    let status = canary.ok().flatten().and_then(|c| c.status);
    let events = events(client, APP_NAMESPACE, "Canary", name).await.unwrap_or_default();
    (status, events)
}

/// Seconds of soak left for a soaking wave.
fn soak_left(
    phase: WavePhase,
    succeeded_at: Option<DateTime<Utc>>,
    soak: Option<&str>,
    now: DateTime<Utc>,
) -> Option<u64> {
    if phase != WavePhase::Soaking {
        return None;
    }
    let soak = petrel::core::strategy::parse_duration(soak?).ok()?;
    let ends = succeeded_at? + chrono::Duration::from_std(soak).ok()?;
    let left = (ends - now).num_milliseconds().max(0);
    // Rounded up: "0s left" only once it is over.
    Some(u64::try_from(left).unwrap_or(0).div_ceil(1000))
}

/// The screen as the fleet is now (stage and narration from the board).
pub async fn snapshot(board: &Board, sources: &Sources) -> Screen {
    let (namespace, name) = &sources.rollout;
    let rollout = Api::<Rollout>::namespaced(sources.hub.clone(), namespace).get_opt(name).await;
    let hub_events = events(&sources.hub, namespace, "Rollout", "hub").await.unwrap_or_default();
    let members = futures::future::join_all(sources.members.iter().map(|(n, c)| read_member(n, c))).await;
    let now = Utc::now();

    let mut screen = Screen { rollout: format!("{namespace}/{name}"), ..Screen::default() };
    let (spec, status) = match rollout {
        Ok(Some(r)) => (Some(r.spec), r.status.unwrap_or_default()),
        Ok(None) => {
            screen.rollout_line = "not found".into();
            (None, Default::default())
        }
        Err(e) => {
            screen.rollout_line = format!("cannot be read: {e}");
            (None, Default::default())
        }
    };
    if spec.is_some() {
        screen.rollout_line = rollout_line(&status);
    }
    let soak_of =
        |wave: &str| spec.as_ref().and_then(|s| s.waves.iter().find(|w| w.name == wave)).and_then(|w| w.soak.clone());
    screen.waves = status
        .waves
        .iter()
        .map(|w| WaveRow {
            name: w.name.clone(),
            phase: format!("{:?}", w.phase),
            members: w.members,
            succeeded: w.succeeded,
            failed: w.failed,
            opened: w.opened_at.map(hms),
            soak_left: soak_left(w.phase, w.succeeded_at, soak_of(&w.name).as_deref(), now),
            soak: soak_of(&w.name),
        })
        .collect();
    // Before the hub's first status: the waves as declared.
    if screen.waves.is_empty()
        && let Some(spec) = &spec
    {
        screen.waves = spec
            .waves
            .iter()
            .map(|w| WaveRow { name: w.name.clone(), phase: "-".into(), soak: w.soak.clone(), ..WaveRow::default() })
            .collect();
    }
    let mut events = hub_events;
    for ((name, _), (canary, member_events)) in sources.members.iter().zip(members) {
        events.extend(member_events);
        let hub_view = status.members.iter().find(|m| &m.cluster == name);
        let phase = hub_view.and_then(|m| m.phase).or(canary.as_ref().map(|c| c.phase));
        screen.members.push(MemberRow {
            name: name.clone(),
            wave: hub_view.and_then(|m| m.wave.clone()).unwrap_or_else(|| "-".into()),
            state: hub_view.map_or_else(|| "-".into(), |m| format!("{:?}", m.state)),
            phase: phase.map_or_else(|| "-".into(), |p| p.to_string()),
            weight: hub_view.map_or_else(|| canary.as_ref().map_or(0, |c| c.canary_weight), |m| m.weight),
            failed_checks: hub_view.map_or_else(|| canary.as_ref().map_or(0, |c| c.failed_checks), |m| m.failed_checks),
            release: hub_view
                .and_then(|m| m.release.clone())
                .or_else(|| canary.as_ref().and_then(|c| c.release.clone())),
            primary: canary.as_ref().and_then(|c| c.promoted_release.clone()),
            contact_secs_ago: hub_view.and_then(|m| m.last_contact).map(|t| (now - t).num_seconds()),
            message: hub_view.map(|m| m.message.clone()).unwrap_or_default(),
        });
    }
    events.sort_by_key(|e| std::cmp::Reverse(e.at));
    events.truncate(view::EVENTS);
    screen.events = events;
    let state = board.lock();
    screen.title = "petrel demo: podinfo released across a local fleet, ordered by petrel's hub".into();
    screen.stage = state.stage.clone();
    screen.elapsed_secs = board.started.elapsed().as_secs();
    screen.log = state.log.clone();
    screen
}

fn rollout_line(status: &petrel::api::rollout::RolloutStatus) -> String {
    let phase = status.phase.map_or_else(|| "no status yet".to_owned(), |p| format!("{p:?}"));
    let release = status.release.as_deref().map_or("-", view::short_image);
    let wave = status.current_wave.as_deref().unwrap_or("-");
    let s = &status.summary;
    format!(
        "{phase}, release {release}, current wave {wave}; members {}/{} succeeded, {} failed; waves done {}",
        s.succeeded,
        s.total,
        s.failed,
        if s.waves_done.is_empty() { "-" } else { &s.waves_done }
    )
}

/// Terminal (columns, rows), or 120x50 when unknown.
fn terminal_size() -> (usize, usize) {
    let mut size = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes a winsize into the pointer we pass, which is valid.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
    let cols = if ok && size.ws_col > 0 { usize::from(size.ws_col) } else { 120 };
    let rows = if ok && size.ws_row > 0 { usize::from(size.ws_row) } else { 50 };
    (cols, rows)
}

/// Redraws the view every second (terminal) or prints what changed (lines).
pub async fn run(board: Arc<Board>, sources: Sources) {
    let mut last = Screen::default();
    let mut first = true;
    loop {
        let screen = snapshot(&board, &sources).await;
        match board.output {
            Output::Terminal => {
                let mut out = String::new();
                if first {
                    out.push_str("\x1b[2J");
                }
                out.push_str("\x1b[H");
                let (cols, rows) = terminal_size();
                // One row spare: the cursor sits below the last line.
                for line in view::render_fitting(&screen, cols, rows.saturating_sub(1)) {
                    out.push_str(&line);
                    out.push_str("\x1b[K\n");
                }
                out.push_str("\x1b[J");
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(out.as_bytes());
                let _ = stdout.flush();
            }
            Output::Lines => {
                let stamp = board.stamp();
                // The driver narrates stage changes itself.
                for line in view::changes(&Screen { stage: screen.stage.clone(), ..last.clone() }, &screen) {
                    print_line(&format!("{stamp} {line}"));
                }
            }
            Output::Quiet => {}
        }
        first = false;
        last = screen;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soak_left_counts_down_only_while_soaking() {
        let succeeded = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let at = |s: i64| succeeded + chrono::Duration::milliseconds(s);
        assert_eq!(soak_left(WavePhase::Soaking, Some(succeeded), Some("20s"), at(5_500)), Some(15));
        assert_eq!(soak_left(WavePhase::Soaking, Some(succeeded), Some("20s"), at(25_000)), Some(0));
        assert_eq!(soak_left(WavePhase::Succeeded, Some(succeeded), Some("20s"), at(5_000)), None);
        assert_eq!(soak_left(WavePhase::Soaking, None, Some("20s"), at(5_000)), None);
        assert_eq!(soak_left(WavePhase::Soaking, Some(succeeded), Some("later"), at(5_000)), None);
    }
}
