//! Writes the CRDs generated from the Rust types to `crds/` and to the Helm chart's
//! `charts/petrel/crds/` (or checks both with `--check`).

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dirs = [root.join("crds"), root.join("charts/petrel/crds")];
    let mut stale = Vec::new();
    for (file, crd) in petrel_api::crds() {
        let yaml = match petrel_api::crd_yaml(&crd) {
            Ok(y) => y,
            Err(e) => {
                eprintln!("cannot render {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        for dir in &dirs {
            let path = dir.join(file);
            if check {
                if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    stale.push(path.display().to_string());
                }
            } else if let Err(e) = std::fs::write(&path, &yaml) {
                eprintln!("cannot write {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if !stale.is_empty() {
        eprintln!("stale CRDs (run `cargo run -p petrel-api --bin crdgen`): {}", stale.join("../.."));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
