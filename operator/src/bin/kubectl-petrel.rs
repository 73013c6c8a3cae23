//! `kubectl-petrel`: the kubectl plugin (its program is `petrel_plugin::cli`), built with
//! petrel's version. The image carries it inside `petrel`, run by this name.

fn main() -> std::process::ExitCode {
    petrel_plugin::cli::main(petrel::version::LONG)
}
