//! `mubectl`: the command-line client for mube.

mod apply;
mod client;
mod delete;
mod describe;
mod discovery;
mod get;
mod kubeconfig;
mod progress;
mod table;
mod token;
mod watch;

use clap::{Args, Parser, Subcommand, ValueEnum};

use client::{Client, CtlError};

#[derive(Parser, Debug)]
#[command(name = "mubectl", version, about = "Command-line client for the mube API server", long_about = None)]
struct Cli {
    /// API server URL. Without it: the server of the kubeconfig's current
    /// context, else MUBE_API_SERVER, else http://127.0.0.1:8080.
    #[arg(long, global = true)]
    server: Option<String>,

    /// The kubeconfig to take the server and credentials from (default:
    /// $KUBECONFIG, else ./data/kubeconfig when it exists: the one
    /// mube-apiserver writes to <dataDir>/kubeconfig for `make run`).
    #[arg(long, global = true)]
    kubeconfig: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List resources, or show one, as a table or as objects; -w follows changes.
    ///
    /// Examples:
    ///   mubectl get nodes
    ///   mubectl get nodes -o wide
    ///   mubectl get node mube-node-1 -o yaml
    ///   mubectl get nodes -l mube.io/pool=example
    ///   mubectl get nodes -w
    ///   mubectl get leases -n kube-node-lease
    Get(GetArgs),
    /// Show the details of a node: addresses, state, conditions, versions, capacity, lease.
    Describe {
        /// Resource type: node.
        resource: String,
        /// Node name.
        name: String,
    },
    /// Create or update objects from a YAML or JSON file (several documents allowed; - for stdin).
    Apply {
        /// File to apply.
        #[arg(short = 'f', long = "filename", required = true)]
        file: String,
        /// Namespace for namespaced objects that do not name one.
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[command(flatten)]
        dry_run: DryRunArg,
    },
    /// Delete resources by name, and wait until they are gone.
    ///
    /// Examples:
    ///   mubectl delete node mube-node-2
    ///   mubectl delete pod web-1 web-2 --wait=false
    Delete {
        /// Resource type: node, lease, pod, ...
        resource: String,
        /// Names of the objects.
        #[arg(required = true)]
        names: Vec<String>,
        /// Namespace (for namespaced kinds).
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Wait until each object is gone (a pod until its node has
        /// stopped it), as kubectl does; --wait=false returns at once.
        #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", require_equals = true, action = clap::ArgAction::Set)]
        wait: bool,
        #[command(flatten)]
        dry_run: DryRunArg,
    },
    /// Join tokens, for adding nodes: create, list, delete (revoke).
    ///
    /// Examples:
    ///   mubectl token create --ttl 24h
    ///   mubectl token list
    ///   mubectl token delete abcdef
    #[command(subcommand)]
    Token(token::TokenCommand),
}

/// `--dry-run`, with kubectl's meaning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Write.
    #[default]
    None,
    /// Send no write; print what would be done.
    Client,
    /// Send the write with dryRun=All: the server checks everything and persists nothing.
    Server,
}

impl DryRun {
    /// What kubectl appends to its message.
    pub fn suffix(self) -> &'static str {
        match self {
            DryRun::None => "",
            DryRun::Client => " (dry run)",
            DryRun::Server => " (server dry run)",
        }
    }

    /// `path` with the query a write sends for this mode.
    pub fn path(self, path: &str) -> String {
        match self {
            DryRun::Server => format!("{path}?dryRun=All"),
            _ => path.to_string(),
        }
    }
}

#[derive(Args, Debug)]
pub struct DryRunArg {
    /// none (write), client (send no write) or server (the server checks and
    /// persists nothing). A bare --dry-run means client, as in kubectl.
    #[arg(long = "dry-run", value_enum, default_value = "none", num_args = 0..=1, default_missing_value = "client", require_equals = true)]
    pub dry_run: DryRun,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Resource type: nodes (node, no) or leases (lease).
    pub resource: String,
    /// Show only the object with this name.
    pub name: Option<String>,
    /// Output format: wide, json, yaml or name.
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Label selector, e.g. -l 'env=prod,tier in (web)'.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Field selector, e.g. --field-selector status.state=Ready.
    #[arg(long)]
    pub field_selector: Option<String>,
    /// After listing, watch for changes and print each one.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Watch for changes without listing first.
    #[arg(long)]
    pub watch_only: bool,
    /// Namespace (for leases).
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// List across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// The kubeconfig to read: --kubeconfig, else $KUBECONFIG's first file,
/// else the local cluster's.
fn kubeconfig_path(cli: &Cli) -> Option<String> {
    if let Some(path) = &cli.kubeconfig {
        return Some(path.clone());
    }
    if let Some(path) = std::env::var("KUBECONFIG")
        .ok()
        .and_then(|v| v.split(':').find(|p| !p.is_empty()).map(str::to_string))
    {
        return Some(path);
    }
    let local = "data/kubeconfig";
    std::path::Path::new(local)
        .exists()
        .then(|| local.to_string())
}

/// Where the API server is and how to log in, in order of precedence:
/// --server overrides the kubeconfig's server but keeps its credentials.
fn target(cli: &Cli) -> Result<kubeconfig::Target, CtlError> {
    let mut target = match kubeconfig_path(cli) {
        // --server without --kubeconfig: a server of its own, no credentials.
        Some(path) if cli.server.is_none() || cli.kubeconfig.is_some() => {
            kubeconfig::load(&path).map_err(CtlError::Other)?
        }
        _ => kubeconfig::Target {
            server: std::env::var("MUBE_API_SERVER")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "http://127.0.0.1:8080".to_string()),
            ..Default::default()
        },
    };
    if let Some(server) = &cli.server {
        target.server = server.clone();
    }
    Ok(target)
}

async fn run(cli: Cli) -> Result<(), CtlError> {
    let client = Client::new(&target(&cli)?)?;
    match cli.command {
        Command::Get(args) => get::run(&client, args).await,
        Command::Describe { resource, name } => describe::run(&client, &resource, &name).await,
        Command::Apply {
            file,
            namespace,
            dry_run,
        } => apply::run(&client, &file, &namespace, dry_run.dry_run).await,
        Command::Delete {
            resource,
            names,
            namespace,
            wait,
            dry_run,
        } => {
            delete::run(
                &client,
                &resource,
                &names,
                &namespace,
                wait,
                dry_run.dry_run,
            )
            .await
        }
        Command::Token(command) => token::run(&client, command).await,
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
