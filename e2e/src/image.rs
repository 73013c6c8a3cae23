//! petrel's container image (`scripts/image`), run by Debian's podman the way a pod runs
//! it: read-only root filesystem, no capabilities, no privilege escalation, the image's own
//! non-root user; `--network host`, so a container reaches the control planes on loopback.
//!
//! [`Launcher`] is how a test starts petrel: the host binary, or the image. A file named in
//! petrel's arguments (a kubeconfig) is mounted read-only at the same path in the container,
//! so the arguments stay the same either way.
//!
//! podman and buildah use `e2e/containers/containers.conf` (runc, cgroupfs, no default
//! ulimits) and their own vfs storage under `${PETREL_CONTAINERS_DIR:-~/.local/share/petrel/containers}`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::scenario::workspace_root;
use crate::wait::poll;

/// The label every container a test starts carries, with the test process's pid: a
/// container whose process died without removing it is removed by the next test.
pub const OWNER_LABEL: &str = "petrel-e2e.owner";

/// The image archive `scripts/image` wrote, and the reference it holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PetrelImage {
    pub archive: PathBuf,
    /// e.g. `ghcr.io/petrel-dev/petrel:v0.1.0`
    pub reference: String,
}

/// Where podman keeps its images and containers.
pub fn containers_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PETREL_CONTAINERS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    home.join(".local/share/petrel/containers")
}

/// `podman` with petrel's storage and containers.conf.
pub fn podman() -> Command {
    let dir = containers_dir();
    let mut command = Command::new("podman");
    command
        .env("CONTAINERS_CONF", workspace_root().join("e2e/containers/containers.conf"))
        .arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs"])
        .stdin(Stdio::null());
    command
}

/// Runs a podman command to its end; its stdout, or an error with its stderr.
pub fn podman_output(args: &[&str]) -> Result<String> {
    let out = podman().args(args).output().with_context(|| format!("running podman {args:?}"))?;
    ensure!(
        out.status.success(),
        "podman {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image reference `scripts/image` builds (`scripts/image --print-ref`): the chart's
/// default image.
pub fn image_reference() -> Result<String> {
    let script = workspace_root().join("scripts/image");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-ref")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --print-ref", script.display()))?;
    ensure!(out.status.success(), "{} --print-ref failed: {}", script.display(), String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Builds the image once per test process (`scripts/image --no-measure`: nothing to do
/// when its cache holds an archive of the same inputs) and loads it into podman's storage.
/// `PETREL_IMAGE_ARCHIVE` names an archive to use instead (nothing is built).
///
/// Blocking: from async code call it through `tokio::task::spawn_blocking`.
pub fn ensure_image() -> Result<PetrelImage> {
    static IMAGE: OnceLock<std::result::Result<PetrelImage, String>> = OnceLock::new();
    IMAGE.get_or_init(|| build_and_load().map_err(|e| format!("{e:#}"))).clone().map_err(anyhow::Error::msg)
}

fn build_and_load() -> Result<PetrelImage> {
    let reference = image_reference()?;
    let archive = match std::env::var_os("PETREL_IMAGE_ARCHIVE") {
        Some(path) => PathBuf::from(path),
        None => {
            let script = workspace_root().join("scripts/image");
            let out = Command::new("bash")
                .arg(&script)
                .arg("--no-measure")
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("running {} --no-measure", script.display()))?;
            ensure!(out.status.success(), "{} failed ({}); its output is above", script.display(), out.status);
            let stdout = String::from_utf8_lossy(&out.stdout);
            PathBuf::from(
                stdout.lines().map(str::trim).rfind(|l| !l.is_empty()).context("scripts/image printed nothing")?,
            )
        }
    };
    ensure!(archive.is_file(), "image archive {} is missing", archive.display());
    remove_orphaned_containers();
    let archive_arg = archive.to_string_lossy().into_owned();
    podman_output(&["load", "--quiet", "--input", &archive_arg]).context("loading the image into podman")?;
    let image = PetrelImage { archive, reference };
    // What the archive holds must be what the chart names, or the tests run something else.
    podman_output(&["image", "exists", &image.reference])
        .with_context(|| format!("{} holds no {}", image.archive.display(), image.reference))?;
    Ok(image)
}

/// Removes the containers of test processes that are gone (SIGKILLed before their
/// containers' guards ran).
fn remove_orphaned_containers() {
    let filter = format!("label={OWNER_LABEL}");
    let format = format!("{{{{.Names}}}} {{{{index .Labels \"{OWNER_LABEL}\"}}}}");
    let Ok(listing) = podman_output(&["ps", "--all", "--filter", &filter, "--format", &format]) else { return };
    for line in listing.lines() {
        let Some((name, pid)) = line.split_once(' ') else { continue };
        let alive = pid.trim().parse::<i32>().is_ok_and(|pid| {
            // SAFETY: kill with signal 0 sends nothing; it only asks whether the pid exists.
            unsafe { libc::kill(pid, 0) == 0 }
        });
        if !alive {
            let _ = podman_output(&["rm", "--force", "--time", "0", name]);
        }
    }
}

/// A running container, removed (`podman rm --force`) when dropped: SIGKILL to the
/// attached `podman run` would leave the container itself running.
#[derive(Debug)]
pub struct Container {
    pub name: String,
}

impl Container {
    /// Stops and removes the container at once (no graceful stop), as a node loss would.
    pub fn remove(&self) {
        let _ = podman_output(&["rm", "--force", "--time", "0", &self.name]);
    }

    /// SIGTERM to petrel, and SIGKILL after `grace` (a pod's termination).
    pub fn stop(&self, grace: Duration) -> Result<()> {
        podman_output(&["stop", "--time", &grace.as_secs().to_string(), &self.name]).map(drop)
    }

    /// `podman inspect --format <format>` of the running container.
    pub fn inspect(&self, format: &str) -> Result<String> {
        Ok(podman_output(&["inspect", "--format", format, &self.name])?.trim().to_string())
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        self.remove();
    }
}

/// How a test runs petrel.
#[derive(Clone, Debug)]
pub enum Launcher {
    /// The host binary (`target/debug/petrel`).
    Binary(PathBuf),
    /// The image, in a container (see the module's documentation).
    Image(PetrelImage),
}

impl Launcher {
    /// The command that runs petrel with `args` and `env`, and for the image the container
    /// it starts (remove it to stop petrel; the command's process is podman's client, which
    /// streams petrel's output and exits when the container does).
    pub fn command(&self, args: &[String], env: &[(&str, &str)]) -> (Command, Option<Container>) {
        match self {
            Launcher::Binary(binary) => {
                let mut command = Command::new(binary);
                command.args(args).envs(env.iter().copied());
                (command, None)
            }
            Launcher::Image(image) => {
                let (command, name) = container_command(image, "/usr/local/bin/petrel", args, env);
                (command, Some(Container { name }))
            }
        }
    }

    /// The file the operator's log goes to is the caller's; this names the launcher in it.
    pub fn describe(&self) -> String {
        match self {
            Launcher::Binary(binary) => binary.display().to_string(),
            Launcher::Image(image) => format!("{} (podman)", image.reference),
        }
    }
}

/// `podman run` of `entrypoint` in the image, hardened as the chart's Deployment is.
pub fn container_command(
    image: &PetrelImage,
    entrypoint: &str,
    args: &[String],
    env: &[(&str, &str)],
) -> (Command, String) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!("petrel-e2e-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut command = podman();
    command.args(["run", "--rm", "--name", &name, "--pull", "never", "--network", "host"]);
    command.arg("--label").arg(format!("{OWNER_LABEL}={}", std::process::id()));
    // readOnlyRootFilesystem, capabilities drop ALL, allowPrivilegeEscalation false; podman
    // mounts a tmpfs on /tmp as the chart mounts an emptyDir there.
    command.args(["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]);
    for path in mounted_files(args) {
        command.arg("--volume").arg(format!("{0}:{0}:ro", path.display()));
    }
    for (key, value) in env {
        command.arg("--env").arg(format!("{key}={value}"));
    }
    command.args(["--entrypoint", entrypoint]).arg(&image.reference).args(args);
    (command, name)
}

/// The files named in `args` (`--flag=/path` or `/path`) that exist on the host.
fn mounted_files(args: &[String]) -> Vec<PathBuf> {
    args.iter()
        .map(|a| a.split_once('=').filter(|(flag, _)| flag.starts_with("--")).map_or(a.as_str(), |(_, v)| v))
        .map(Path::new)
        .filter(|p| p.is_absolute() && p.is_file())
        .map(Path::to_path_buf)
        .collect()
}

/// Runs a binary of the image to its end (`--rm`, no network) and returns (success,
/// stdout, stderr): for `--version` and the bad-input checks.
pub fn run_to_end(image: &PetrelImage, entrypoint: &str, args: &[String]) -> Result<(bool, String, String)> {
    let (mut command, _name) = container_command(image, entrypoint, args, &[]);
    let out = command.output().context("running podman run")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// How long petrel from the image takes to serve `/readyz` 200.
#[derive(Clone, Copy, Debug)]
pub struct ReadyTime {
    /// From `podman run` (container creation included) to the first 200.
    pub from_run: Duration,
    /// From the container's process start (`podman inspect .State.StartedAt`) to the first 200.
    pub from_process_start: Duration,
}

/// Runs petrel from `image` with `args` (plus `--metrics-addr` on a free loopback port)
/// and polls `/readyz` every 10 ms until it answers 200; then removes the container.
pub async fn measure_start_to_ready(
    image: &PetrelImage,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<ReadyTime> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut args = args.to_vec();
    args.push(format!("--metrics-addr=127.0.0.1:{port}"));
    let (mut command, name) = container_command(image, "/usr/local/bin/petrel", &args, env);
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    command.stdout(file.try_clone()?).stderr(file);
    let container = Container { name };
    let http = reqwest::Client::builder().timeout(Duration::from_millis(500)).build()?;
    let url = format!("http://127.0.0.1:{port}/readyz");
    let started = Instant::now();
    let mut child = crate::fleet::spawn_tied_to_process(command).context("starting podman run")?;
    let ready = poll(started + Duration::from_secs(60), Duration::from_millis(10), async || {
        if let Ok(response) = http.get(&url).send().await
            && response.status() == reqwest::StatusCode::OK
        {
            return Ok(Some((started.elapsed(), chrono::Utc::now())));
        }
        if let Some(status) = child.try_wait()? {
            bail!("petrel exited ({status}) before it was ready: {}", std::fs::read_to_string(log).unwrap_or_default());
        }
        Ok(None)
    })
    .await?;
    let (from_run, ready_at) = ready.with_context(|| {
        format!("petrel was not ready after 60 s: {}", std::fs::read_to_string(log).unwrap_or_default())
    })?;
    let started_at = container.inspect("{{.State.StartedAt.Format \"2006-01-02T15:04:05.999999999Z07:00\"}}")?;
    let started_at = chrono::DateTime::parse_from_rfc3339(&started_at)
        .with_context(|| format!("parsing the container's start time {started_at:?}"))?;
    let from_process_start = (ready_at - started_at.with_timezone(&chrono::Utc)).to_std().unwrap_or_default();
    drop(container);
    let _ = child.kill();
    let _ = child.wait();
    Ok(ReadyTime { from_run, from_process_start })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_named_in_arguments_are_mounted_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("petrel-e2e-mounts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("member.kubeconfig");
        std::fs::write(&kubeconfig, "x").unwrap();
        let args: Vec<String> = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--metrics-addr=127.0.0.1:0".into(),
            format!("--kubeconfig={}", dir.join("missing").display()),
            dir.display().to_string(),
            "relative.kubeconfig".into(),
        ];
        assert_eq!(mounted_files(&args), vec![kubeconfig.clone(), kubeconfig]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
