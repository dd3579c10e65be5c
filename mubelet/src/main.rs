//! `mubelet`: mube's node agent. Configuration is by environment variable;
//! see the README.

mod agent;
mod config;
mod credentials;
mod health;
mod heartbeat;
mod registration;
mod system;

fn main() -> std::process::ExitCode {
    // One worker thread: the agent's work is a request every few seconds.
    mube_process::main("mubelet", Some(1), config::Config::from_env, agent::run)
}
