//! A `petrel` operator process per member, logging to a file.
//!
//! Like the fleet's components: its own process group (a terminal's Ctrl-C
//! reaches only the demo, which then tears down in order), and
//! `PR_SET_PDEATHSIG = SIGKILL` so it dies with the demo even if the demo is
//! SIGKILLed. PDEATHSIG fires when the *thread* that forked the child
//! exits, so children are forked by one thread that lives as long as the
//! process.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use petrel_e2e::image::{Container, Launcher};

/// Grace between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// A running child process, stopped (SIGTERM, then SIGKILL) on drop. petrel from the
/// image: the child is `podman run`, which passes SIGTERM on to petrel, and the container
/// is removed at the end.
pub struct ChildProcess {
    pub name: String,
    pub log: PathBuf,
    child: Option<Child>,
    container: Option<Container>,
}

impl ChildProcess {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn start(name: &str, program: &Path, args: &[String], log: &Path) -> Result<ChildProcess> {
        Self::launch(name, &Launcher::Binary(program.to_path_buf()), args, log)
    }

    /// Starts petrel with `args` as `launcher` says (the binary, or the image).
    pub fn launch(name: &str, launcher: &Launcher, args: &[String], log: &Path) -> Result<ChildProcess> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening log {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log file handle")?;
        let (mut cmd, container) = launcher.command(args, &[]);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = petrel_e2e::fleet::spawn_tied_to_process(cmd)
            .with_context(|| format!("starting {}", launcher.describe()))?;
        Ok(ChildProcess { name: name.to_owned(), log: log.to_owned(), child: Some(child), container })
    }

    /// Error with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else { return Err(anyhow!("{} was stopped", self.name)) };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(anyhow!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 20)
            )),
            Err(e) => Err(anyhow!("{}: {e}", self.name)),
        }
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM without waiting (see [`ChildProcess::stop`]).
    pub fn terminate(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Ok(None) = child.try_wait()
        {
            // SAFETY: kill has no memory effects; the pid is our child's and is
            // not reaped yet (try_wait just said so), so it cannot name another process.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }

    /// SIGTERM, then SIGKILL after a grace; reaps the child.
    pub fn stop(&mut self) {
        self.terminate();
        // Whatever happens to podman's client, the container goes too.
        let _container = self.container.take();
        let Some(mut child) = self.child.take() else { return };
        if let Ok(None) = child.try_wait() {
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
