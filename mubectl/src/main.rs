//! `mubectl`: placeholder so the workspace has its final layout; the next issue
//! ("mubelet and mubectl, and a local cluster in one command") fills it in.

fn main() -> std::process::ExitCode {
    eprintln!("mubectl: not implemented yet");
    std::process::ExitCode::FAILURE
}
