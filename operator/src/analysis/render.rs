//! Rendering MetricTemplate queries off the async runtime.
//!
//! [`render_query`] is bounded in steps and size (see its module docs), but a template
//! at its bounds still takes milliseconds of CPU, and no timeout can interrupt a
//! function that does not yield. So rendering runs on the blocking thread pool, at
//! most [`RENDER_SLOTS`] renderings at a time: hostile templates can neither stall
//! the runtime's worker threads (every reconcile, `/livez`) nor fill the blocking
//! pool that DNS lookups and file reads share.

use std::time::Duration;

use metrics_providers::{QueryLanguage, QueryVars, render_query};
use tokio::sync::Semaphore;

/// Renderings that may run at once, process-wide.
pub const RENDER_SLOTS: usize = 2;
/// How long a rendering waits for a slot before its check fails.
pub const RENDER_WAIT: Duration = Duration::from_secs(5);

static SLOTS: Semaphore = Semaphore::const_new(RENDER_SLOTS);

/// [`render_query`] on the blocking pool, within [`RENDER_SLOTS`]; the error is the
/// message of a failed check.
pub async fn render_off_runtime(template: &str, vars: &QueryVars, language: QueryLanguage) -> Result<String, String> {
    let permit = match tokio::time::timeout(RENDER_WAIT, SLOTS.acquire()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_closed)) => return Err("the query renderer is shut down".into()),
        Err(_) => {
            return Err(format!(
                "every query renderer was busy for {RENDER_WAIT:?}; the check is retried at the next interval"
            ));
        }
    };
    let (template, vars) = (template.to_owned(), vars.clone());
    // The permit moves into the rendering and is released when it ends, even if the
    // caller stopped waiting (its check timed out): the slot is busy as long as the
    // thread is.
    let rendering = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        render_query(&template, &vars, language)
    });
    match rendering.await {
        Ok(rendered) => rendered.map_err(|error| error.to_string()),
        Err(error) => Err(format!("rendering the query template failed: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use super::*;

    fn vars(long: usize) -> QueryVars {
        QueryVars {
            name: "podinfo".into(),
            namespace: "test".into(),
            target: "podinfo".into(),
            service: "podinfo".into(),
            interval: "1m".into(),
            variables: BTreeMap::from([("s".to_string(), "x".repeat(long))]),
            ..QueryVars::default()
        }
    }

    const LOOPS: &str = "{% for a in variables.s %}{% for b in variables.s %}{% for c in variables.s %}{% endfor %}{% endfor %}{% endfor %}1";

    /// Many hostile renderings at once on a one-thread runtime: the runtime keeps
    /// serving other tasks (a timer fires on time), and each rendering fails on its budget.
    #[tokio::test(flavor = "current_thread")]
    async fn hostile_renderings_leave_the_runtime_free() {
        let started = Instant::now();
        let hostile: Vec<_> = (0..6)
            .map(|_| tokio::spawn(async { render_off_runtime(LOOPS, &vars(10_000), QueryLanguage::PromQl).await }))
            .collect();
        let ticked = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            started.elapsed()
        });
        let ticked = ticked.await.unwrap();
        assert!(ticked < Duration::from_millis(500), "the runtime was blocked: a 20 ms timer fired after {ticked:?}");
        for rendering in hostile {
            let error = rendering.await.unwrap().unwrap_err();
            assert!(error.contains("steps"), "{error}");
        }
        let fine = render_off_runtime("up{a=\"{{ variables.s }}\"}", &vars(3), QueryLanguage::PromQl).await;
        assert_eq!(fine.unwrap(), "up{a=\"xxx\"}");
    }
}
