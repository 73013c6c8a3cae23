//! Embeds the git revision petrel is built from as `PETREL_GIT_REVISION` (read by
//! `petrel::version`), so `petrel --version` and `kubectl petrel version` name it.
//!
//! Where it comes from, first found wins:
//! 1. the `PETREL_GIT_REVISION` environment variable (release builds set it);
//! 2. `git rev-parse HEAD` when the sources are a git checkout;
//! 3. the file `REVISION` next to this script: `git archive` (and so GitHub's source
//!    tarballs) writes the commit into it (`export-subst` in .gitattributes);
//! 4. `unknown`.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PETREL_GIT_REVISION");
    println!("cargo:rerun-if-changed=REVISION");
    let revision = from_env().or_else(from_git).or_else(from_archive).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PETREL_GIT_REVISION={revision}");
}

fn from_env() -> Option<String> {
    std::env::var("PETREL_GIT_REVISION").ok().map(|r| r.trim().to_string()).filter(|r| !r.is_empty())
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    out.status.success().then(|| text.trim().to_string()).filter(|t| !t.is_empty())
}

fn from_git() -> Option<String> {
    let revision = git(&["rev-parse", "--verify", "HEAD"])?;
    // Built again when HEAD moves: a checkout changes HEAD, a commit changes the branch's
    // ref (a loose file, or packed-refs once git packed it). Worktrees keep their own HEAD.
    let mut watched =
        vec![git(&["rev-parse", "--git-path", "HEAD"])?, git(&["rev-parse", "--git-path", "packed-refs"])?];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&["rev-parse", "--git-path", &branch]));
    }
    for path in watched {
        // A ref that is only packed has no loose file; watching it would rerun every build.
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(revision)
}

fn from_archive() -> Option<String> {
    let text = std::fs::read_to_string("REVISION").ok()?;
    let revision = text.trim();
    // Unexpanded outside a `git archive`.
    (!revision.is_empty() && !revision.contains("$Format")).then(|| revision.to_string())
}
