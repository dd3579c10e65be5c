//! `mube-apiserver`: see the README for configuration.

fn main() -> std::process::ExitCode {
    mube_process::main(
        "mube-apiserver",
        None,
        mube_apiserver::config::Config::from_env,
        mube_apiserver::server::run,
    )
}
