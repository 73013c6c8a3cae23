//! What petrel was built from: the crate version and the git revision (see
//! `operator/build.rs`), for `petrel --version`, `kubectl petrel version` and the image.

/// The crate version, e.g. `0.1.0` (the image tag is `v<VERSION>`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binary was built from, or `unknown`.
pub const REVISION: &str = env!("PETREL_GIT_REVISION");

/// `<version> (revision <commit>)`: what `--version` prints after the program's name.
pub const LONG: &str = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("PETREL_GIT_REVISION"), ")");
