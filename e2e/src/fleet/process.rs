//! Child processes of the fleet.
//!
//! Every component runs in its own process group (so a terminal's Ctrl-C
//! reaches only the harness, which then tears down in order, and so a kill
//! reaches any grandchild), with `PR_SET_PDEATHSIG = SIGKILL` so it dies if
//! the harness is SIGKILLed. PDEATHSIG fires when the *thread* that forked
//! the child exits, so all children are forked by one [`Spawner`] thread
//! that lives exactly as long as the fleet.

use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

/// How to (re)start one component.
#[derive(Debug, Clone)]
pub struct ProcSpec {
    /// Component name used in messages, e.g. `member-1/kube-apiserver`.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    /// stdout and stderr are appended here.
    pub log: PathBuf,
}

type SpawnRequest = (ProcSpec, mpsc::SyncSender<Result<Child>>);

/// A thread that forks every child of the fleet (see module docs).
pub struct Spawner {
    tx: Option<mpsc::Sender<SpawnRequest>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub fn new() -> Result<Self> {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let thread = std::thread::Builder::new()
            .name("petrel-fleet-spawner".into())
            .spawn(move || {
                for (spec, reply) in rx {
                    let _ = reply.send(spawn_now(&spec));
                }
            })
            .context("starting the spawner thread")?;
        Ok(Self { tx: Some(tx), thread: Some(thread) })
    }

    /// Starts `spec` from the spawner thread. Blocking but fast (fork+exec).
    pub fn spawn(&self, spec: &ProcSpec) -> Result<Child> {
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        self.tx
            .as_ref()
            .context("spawner already shut down")?
            .send((spec.clone(), reply_tx))
            .map_err(|_| anyhow!("spawner thread is gone"))?;
        reply_rx.recv().map_err(|_| anyhow!("spawner thread is gone"))?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn spawn_now(spec: &ProcSpec) -> Result<Child> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(&spec.log)
        .with_context(|| format!("opening log {}", spec.log.display()))?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
    die_with_parent(&mut cmd);
    cmd.spawn().with_context(|| format!("starting {} ({})", spec.name, spec.program.display()))
}

/// Makes the child of `cmd` receive SIGKILL when the thread that forks it exits
/// (`PR_SET_PDEATHSIG`), so it never outlives a harness that was SIGKILLed.
pub(crate) fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe prctl, getppid and _exit.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The harness died between fork and prctl: do not outlive it.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

type KeeperRequest = (Command, mpsc::SyncSender<std::io::Result<Child>>);

/// Spawns `cmd` so that it dies with the test or tool process: `PR_SET_PDEATHSIG`
/// fires when the *thread* that forked the child exits, and tokio's worker and
/// blocking threads come and go, so the fork happens on one keeper thread that
/// lives as long as the process.
pub fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    static KEEPER: std::sync::OnceLock<std::sync::Mutex<mpsc::Sender<KeeperRequest>>> = std::sync::OnceLock::new();
    die_with_parent(&mut cmd);
    let sender = KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<KeeperRequest>();
        let spawned = std::thread::Builder::new().name("petrel-e2e-spawner".into()).spawn(move || {
            // The sender lives in a static, so this loop runs until the process exits.
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the spawner thread");
        }
        std::sync::Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let gone = || std::io::Error::other("the spawner thread is gone");
    sender.lock().unwrap_or_else(std::sync::PoisonError::into_inner).send((cmd, reply_tx)).map_err(|_| gone())?;
    reply_rx.recv().map_err(|_| gone())?
}

/// A running (or stopped) component.
#[derive(Debug)]
pub struct Proc {
    pub spec: ProcSpec,
    child: Option<Child>,
    exited: Option<ExitStatus>,
}

impl Proc {
    pub fn start(spawner: &Spawner, spec: ProcSpec) -> Result<Self> {
        let child = spawner.spawn(&spec)?;
        Ok(Self { spec, child: Some(child), exited: None })
    }

    /// Starts it again (after [`Proc::stop`] or a crash), same args, same log.
    pub fn restart(&mut self, spawner: &Spawner) -> Result<()> {
        self.stop(Duration::from_secs(5));
        self.child = Some(spawner.spawn(&self.spec)?);
        self.exited = None;
        Ok(())
    }

    /// Pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` if it has exited (reaps it).
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exited = Some(status);
            self.child = None;
        }
        self.exited
    }

    /// Sends `signal` to the component's process group (no wait).
    pub fn signal(&mut self, signal: libc::c_int) {
        if self.poll_exit().is_some() {
            return;
        }
        if let Some(pid) = self.pid() {
            // SAFETY: plain syscall; the pgid is the child's pid
            // (process_group(0)) and the child is not reaped yet, so the id
            // cannot have been reused.
            unsafe {
                libc::kill(-(pid as libc::pid_t), signal);
            }
        }
    }

    /// Waits until it exits, at most until `deadline`. True if it exited.
    pub fn wait_until(&mut self, deadline: Instant) -> bool {
        loop {
            if self.poll_exit().is_some() || self.child.is_none() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the group and reap.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut child) = self.child.take()
            && let Ok(status) = child.wait()
        {
            self.exited = Some(status);
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if !self.wait_until(Instant::now() + grace) {
            self.kill();
        }
    }

    /// Last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.spec.log, lines)
    }

    /// Human description of how it exited.
    pub fn describe_exit(&self) -> String {
        match self.exited {
            Some(s) => match (s.code(), s.signal()) {
                (Some(c), _) => format!("exit code {c}"),
                (_, Some(sig)) => format!("signal {sig}"),
                _ => s.to_string(),
            },
            None => "running".into(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
        }
    }
}

/// Stops many processes concurrently: SIGTERM to all, wait up to `grace`,
/// SIGKILL whatever is left.
pub fn stop_all<'a>(procs: impl IntoIterator<Item = &'a mut Proc>, grace: Duration) {
    let mut procs: Vec<&mut Proc> = procs.into_iter().collect();
    for p in procs.iter_mut() {
        p.signal(libc::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for p in procs.iter_mut() {
        if !p.wait_until(deadline) {
            p.kill();
        }
    }
}

pub fn log_tail(path: &std::path::Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let all: Vec<&str> = s.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
