//! The `opslet` command line: argument parsing and dispatch, one file per subcommand.
//! Exit codes are listed in docs/cli.md and come from [`crate::Error::exit_code`].

mod approvals;
mod artifact;
mod audit;
mod auth;
mod check;
mod cmdb;
mod config_items;
pub(crate) mod local;
mod meta;
mod netdev;
mod new;
mod notify;
mod output;
mod registry;
mod remote;
mod run;
mod schedule;
mod serve;
pub(crate) mod stdio;
mod store;
mod test;
mod worker;

use std::path::PathBuf;
use std::time::Duration;
use stdio::{errln, outln};

use clap::{Parser, Subcommand};

use crate::config::{self, Config};
use crate::error::Error;
use crate::store::Store;

/// Exit code when `opslet audit verify` finds a broken chain.
pub const EXIT_AUDIT_BROKEN: i32 = 7;
/// Exit code when `opslet store check` finds damaged records.
pub const EXIT_STORE_DAMAGED: i32 = 8;
/// Exit code of a run that ended well but whose calls failed on some of their targets (hosts,
/// devices, BMCs), and that did not say it handled them.
pub const EXIT_SOME_TARGETS_FAILED: i32 = 9;
/// Likewise, when no target call succeeded.
pub const EXIT_ALL_TARGETS_FAILED: i32 = 10;

#[derive(Parser, Debug)]
#[command(name = "opslet", version, about = "Sandboxed, audited Lua applets for operations teams")]
pub struct Cli {
    /// Where opslet keeps its store (audit log, kv, registry).
    #[arg(long, global = true, env = "OPSLET_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Configuration file (default: DATA_DIR/opslet.toml when it exists).
    #[arg(long, global = true, env = "OPSLET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run the command on the opslet server at URL, over its HTTP API, as the user of an API
    /// token (OPSLET_TOKEN, or --token-file); paths stay those of this machine.
    #[arg(long, global = true, env = "OPSLET_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// A file holding the API token for --server (when OPSLET_TOKEN is not set).
    #[arg(long, global = true, env = "OPSLET_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a new applet folder from a template.
    New(new::NewArgs),
    /// Validate an applet: manifest, params, permissions and Luau syntax.
    Check(check::CheckArgs),
    /// Run an applet: a folder, or NAME[@VERSION|@sha256:PREFIX] from the registry.
    Run(run::RunArgs),
    /// Run applets' own tests, offline (their module calls answered by fakes; docs/testing.md).
    Test(test::TestArgs),
    /// Publish an applet folder to the registry as a new version (and make it current).
    Publish(registry::PublishArgs),
    /// List the published versions of an applet.
    Versions(registry::NameArgs),
    /// Describe a published version: params, permissions (and how they changed), hash, message.
    Show(registry::RefArgs),
    /// Make a published version the current one.
    Promote(registry::VersionArgs),
    /// Make the previous current version current again.
    Rollback {
        /// Applet name.
        name: String,
    },
    /// Stop new runs of a version (it stays in history; --allow-yanked still runs it).
    Yank(registry::YankArgs),
    /// List the registry's applets with their current versions.
    List {
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
    },
    /// Search the registry by name, tags and description.
    Search(registry::SearchArgs),
    /// Manage featured collections.
    #[command(subcommand)]
    Feature(registry::FeatureCmd),
    /// Write one published version to a single-file bundle.
    Export(registry::ExportArgs),
    /// Publish a bundle written by `export` (its content hash and signature are verified, and
    /// its key must be trusted).
    Import(registry::ImportArgs),
    /// Sign a bundle with your publisher key, for registries that trust it.
    Sign(registry::SignArgs),
    /// Publisher signing keys.
    #[command(subcommand)]
    Key(registry::KeyCmd),
    /// Which publishers' keys `import` trusts.
    #[command(subcommand)]
    Trust(registry::TrustCmd),
    /// Serve the HTTP API (registry reads and runs, with bearer tokens).
    Serve(serve::ServeArgs),
    /// Execute runs that `opslet serve --queue nats://…` queued (docs/scale-out.md).
    Worker(worker::WorkerArgs),
    /// List the risky runs that wait for approval, with their plans (docs/approvals.md).
    Approvals(approvals::ListArgs),
    /// Approve a run that waits for approval; the last approval it needs starts it.
    Approve(approvals::DecideArgs),
    /// Reject a run that waits for approval (-m says why); it will not run.
    Reject(approvals::DecideArgs),
    /// Manage accounts (for `opslet serve`).
    #[command(subcommand)]
    User(auth::UserCmd),
    /// Manage API tokens (for `opslet serve`).
    #[command(subcommand)]
    Token(auth::TokenCmd),
    /// Manage which users and groups may run which applets.
    #[command(subcommand)]
    Grant(auth::GrantCmd),
    /// Manage webhooks (`POST /hooks/NAME` on `opslet serve`).
    #[command(subcommand)]
    Hook(auth::HookCmd),
    /// Notifications `opslet serve` sent for `[[notify.rule]]`s, and a test message.
    #[command(subcommand)]
    Notify(notify::NotifyCmd),
    /// Artifacts in the S3 stores of opslet.toml: list (with checksums and versions), put, get,
    /// rm (docs/artifacts.md).
    #[command(subcommand)]
    Artifact(artifact::ArtifactCmd),
    /// Manage secrets (encrypted at rest; host modules use them by name).
    #[command(subcommand)]
    Secret(auth::SecretCmd),
    /// Run applets on a cron expression, as an owner with their grants (docs/schedules.md).
    #[command(subcommand)]
    Schedule(schedule::ScheduleCmd),
    /// The inventory: hosts, groups and host selectors.
    #[command(subcommand)]
    Cmdb(cmdb::CmdbCmd),
    /// Config items: versioned application configuration per environment, and which host runs what.
    #[command(subcommand)]
    Config(config_items::ConfigCmd),
    /// Network device profiles and stored configuration backups.
    #[command(subcommand)]
    Netdev(netdev::NetdevCmd),
    /// Read and verify the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Check the data store for damaged records, and repair it.
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Print a shell completion script (e.g. `opslet completions bash > /etc/bash_completion.d/opslet`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (`opslet man > opslet.1`).
    Man,
    /// Write the Luau type definitions and editor settings (for luau-lsp): the definitions, the
    /// stdlib helpers' types and each applet's `Params` into DIR; `.luaurc` and
    /// `.vscode/settings.json` into the current folder when absent.
    Meta {
        /// Target folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// An applet folder to write the `Params` type of (repeatable; default: the current
        /// folder, when it holds an applet.toml).
        #[arg(long = "applet", value_name = "FOLDER")]
        applets: Vec<PathBuf>,
    },
}

/// Settings every subcommand shares. The config file is read only by commands that need it.
pub struct Global {
    pub data_dir: PathBuf,
    config_path: Option<PathBuf>,
    /// The host modules set up from opslet.toml by `config()`, kept for `runtime()`.
    modules: std::sync::OnceLock<crate::modules::ModuleSet>,
    /// Set when the server runs this command for a CLI on its local socket.
    forwarded: Option<Forwarded>,
}

/// A command the server runs for a CLI on its local socket ([`local`]): the server's open
/// store, what the CLI resolved, and the token its Ctrl-C (or its going away) cancels.
pub(crate) struct Forwarded {
    pub store: Store,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub cwd: PathBuf,
    pub cancel: crate::runtime::CancelToken,
    /// The account of a remote CLI's token (`--server`); none on the local socket, where the
    /// caller is this OS user.
    pub user: Option<String>,
    /// The server's run service: a run the command starts is a job there, within the server's
    /// run capacity and quotas.
    pub service: crate::service::RunService,
}

impl Global {
    fn new(cli: &Cli) -> Global {
        // An empty OPSLET_DATA_DIR / OPSLET_CONFIG means "not set".
        let non_empty = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        Global {
            data_dir: non_empty(&cli.data_dir).unwrap_or_else(config::default_data_dir),
            config_path: non_empty(&cli.config),
            modules: Default::default(),
            forwarded: None,
        }
    }

    /// Whether the server runs this command for a CLI (it must not end the process, and
    /// Ctrl-C reaches it through the socket).
    pub fn is_forwarded(&self) -> bool {
        self.forwarded.is_some()
    }

    /// The server's run service, when the server runs this command.
    pub fn server_service(&self) -> Option<&crate::service::RunService> {
        self.forwarded.as_ref().map(|f| &f.service)
    }

    /// Whether a remote CLI (`--server`) sent this command.
    pub fn is_remote(&self) -> bool {
        self.forwarded.as_ref().is_some_and(|f| f.user.is_some())
    }

    /// Who the command acts as, for the audit log: a remote CLI's account, else this OS user.
    pub fn actor(&self) -> String {
        match self.forwarded.as_ref().and_then(|f| f.user.clone()) {
            Some(user) => user,
            None => crate::runtime::context::os_user(),
        }
    }

    /// The caller of a run this command starts (`via` says how: `cli`, `watch`, ...; a remote
    /// CLI's runs are `remote-cli`).
    pub fn caller(&self, via: &str) -> crate::runtime::context::Caller {
        crate::runtime::context::Caller { user: self.actor(), via: if self.is_remote() { "remote-cli".into() } else { via.into() } }
    }

    /// `--config`, else DATA_DIR/opslet.toml when it exists, else the defaults.
    /// opslet.toml, checked whole: its own tables and every module's settings.
    pub fn config(&self) -> Result<Config, Error> {
        let config = match &self.config_path {
            Some(p) => Config::load(p)?,
            None => {
                let p = self.data_dir.join("opslet.toml");
                if p.exists() { Config::load(&p)? } else { Config::default() }
            }
        };
        let modules = crate::modules::from_config(&config)?;
        let _ = self.modules.set(modules);
        Ok(config)
    }

    /// A runtime with the host modules `config` set up (read once per process).
    pub fn runtime(&self, config: &Config, store: Store) -> Result<crate::runtime::Runtime, Error> {
        let modules = match self.modules.get() {
            Some(m) => m.clone(),
            None => crate::modules::from_config(config)?,
        };
        crate::runtime::Runtime::new(config, Some(store), modules)
    }

    /// Opens the store and closes runs left open by processes that died; in the server, its
    /// own store.
    pub fn open_store(&self) -> Result<Store, Error> {
        if let Some(f) = &self.forwarded {
            return Ok(f.store.clone());
        }
        let store = Store::open(&self.data_dir, Duration::from_secs(10))?;
        store.audit().close_interrupted()?;
        Ok(store)
    }
}

/// The async runtime a CLI run uses, and a token Ctrl-C cancels (each press, again); in the
/// server, the token of the CLI that sent the command.
fn runtime_with_ctrl_c(global: &Global) -> Result<(tokio::runtime::Runtime, crate::runtime::CancelToken), Error> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("starting the async runtime: {e}")))?;
    if let Some(f) = &global.forwarded {
        return Ok((rt, f.cancel.clone()));
    }
    let cancel = crate::runtime::CancelToken::default();
    let c = cancel.clone();
    rt.spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            c.cancel();
        }
    });
    Ok((rt, cancel))
}

/// Runs the CLI; returns the process exit code.
pub fn main() -> i32 {
    // Like other Unix tools, stop quietly when the reader of our output goes away (`| head`).
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli_args: Vec<String> = std::env::args().collect();
    let serving = cli_args.iter().skip(1).any(|a| a == "serve");
    if cli_args.iter().any(|a| a == "--log-json") {
        // SAFETY: set before any other thread exists.
        unsafe { std::env::set_var("OPSLET_LOG_FORMAT", "json") };
    }
    init_tracing(if serving { "info" } else { "warn" });
    // A bug in host code must not print host source paths at users: one line, and the details
    // only with RUST_BACKTRACE set.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %msg, location = ?info.location(), "host code panicked");
        if std::env::var_os("RUST_BACKTRACE").is_some() {
            // The server's own details stay on its terminal, not a forwarded command's caller's.
            stdio::to_own_stderr(&format!(
                "opslet: internal error: {msg} at {:?}\n{}\n",
                info.location(),
                std::backtrace::Backtrace::force_capture()
            ));
        }
    }));
    let cli = Cli::parse();
    let global = Global::new(&cli);
    let server = cli.server.clone().filter(|s| !s.trim().is_empty());
    if cli.command.needs_data_dir() {
        let stdin = match cli.command.reads_stdin() {
            true => match read_input(&cli.command) {
                Ok(v) => Some(v),
                Err(e) => return report(&e),
            },
            false => None,
        };
        // With --server, a server elsewhere runs it (see `remote`).
        if let Some(server) = server {
            if let Some(flag) =
                cli_args.iter().find(|a| ["--data-dir", "--config"].iter().any(|f| a == f || a.starts_with(&format!("{f}="))))
            {
                let flag = flag.split('=').next().unwrap_or(flag);
                return report(&Error::Usage(format!("{flag} names a path on this machine; with --server, the server uses its own")));
            }
            return match remote::token(cli.token_file.as_deref()).and_then(|t| remote::forward(&server, &t, cli.command, stdin)) {
                Ok(code) => code,
                Err(e) => report(&e),
            };
        }
        // While a server holds the data dir, it runs the command (see `local`).
        let config = global.config_path.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
        return match local::forward(&global.data_dir, config, stdin.clone()) {
            Ok(Some(code)) => code,
            // No server: the command runs here, on the stdin read already.
            Ok(None) => stdio::with_input(stdin, || dispatch(cli.command, &global)),
            Err(e) => report(&e),
        };
    }
    dispatch(cli.command, &global)
}

/// What a command that reads stdin gets: stdin as it is, or on a terminal, what the user types
/// at a prompt that does not echo it (a password twice).
fn read_input(command: &Command) -> Result<Vec<u8>, Error> {
    if !stdio::stdin_is_terminal() {
        return stdio::read_stdin().map_err(|e| Error::Usage(format!("reading stdin: {e}")));
    }
    let ask = |prompt: &str| rpassword::prompt_password(prompt).map_err(|e| Error::Usage(format!("reading from the terminal: {e}")));
    match command {
        Command::User(auth::UserCmd::Passwd { name, .. }) => {
            let first = ask(&format!("new password for {name}: "))?;
            if ask("again: ")? != first {
                return Err(Error::Usage("the two passwords differ; nothing changed".into()));
            }
            Ok(first.into_bytes())
        }
        Command::Secret(auth::SecretCmd::Set { name, .. }) => Ok(ask(&format!("value of secret {name}: "))?.into_bytes()),
        _ => stdio::read_stdin().map_err(|e| Error::Usage(format!("reading stdin: {e}"))),
    }
}

/// The command of a command line the server received; else what clap says of it has been
/// printed, and its exit code is the error.
fn parse_forwarded(argv: &[String]) -> Result<Command, i32> {
    match Cli::try_parse_from(argv) {
        Ok(c) => Ok(c.command),
        Err(e) => {
            let text = e.render().to_string();
            if e.use_stderr() {
                errln!("{}", text.trim_end());
            } else {
                outln!("{}", text.trim_end());
            }
            Err(e.exit_code())
        }
    }
}

/// Runs a command the server received on its local socket; returns its exit code.
pub(crate) fn execute_forwarded(argv: Vec<String>, ctx: Forwarded) -> i32 {
    let mut command = match parse_forwarded(&argv) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !command.needs_data_dir() || matches!(command, Command::Store(_)) {
        return report(&Error::Usage(
            "this command needs the data dir to itself: stop `opslet serve` first (it holds the data dir)".into(),
        ));
    }
    command.absolutize(&ctx.cwd);
    let global =
        Global { data_dir: ctx.data_dir.clone(), config_path: ctx.config.clone(), modules: Default::default(), forwarded: Some(ctx) };
    dispatch(command, &global)
}

fn dispatch(command: Command, global: &Global) -> i32 {
    let result = match command {
        Command::New(args) => new::run(args),
        Command::Check(args) => check::run(global, args),
        Command::Run(args) => run::run(global, args),
        Command::Test(args) => test::run(global, args),
        Command::Publish(args) => registry::publish(global, args),
        Command::Versions(args) => registry::versions(global, args),
        Command::Show(args) => registry::show(global, args),
        Command::Promote(args) => registry::promote(global, args),
        Command::Rollback { name } => registry::rollback(global, name),
        Command::Yank(args) => registry::yank(global, args),
        Command::List { format } => registry::list(global, format),
        Command::Search(args) => registry::search(global, args),
        Command::Feature(cmd) => registry::feature(global, cmd),
        Command::Export(args) => registry::export(global, args),
        Command::Import(args) => registry::import(global, args),
        Command::Sign(args) => registry::sign(args),
        Command::Key(cmd) => registry::key(cmd),
        Command::Trust(cmd) => registry::trust(global, cmd),
        Command::Serve(args) => serve::run(global, args),
        Command::Worker(args) => worker::run(global, args),
        Command::Approvals(args) => approvals::list(global, args),
        Command::Approve(args) => approvals::decide(global, args, true),
        Command::Reject(args) => approvals::decide(global, args, false),
        Command::User(cmd) => auth::user(global, cmd),
        Command::Token(cmd) => auth::token(global, cmd),
        Command::Grant(cmd) => auth::grant(global, cmd),
        Command::Hook(cmd) => auth::hook(global, cmd),
        Command::Notify(cmd) => notify::run(global, cmd),
        Command::Artifact(cmd) => artifact::run(global, cmd),
        Command::Secret(cmd) => auth::secret(global, cmd),
        Command::Schedule(cmd) => schedule::run(global, cmd),
        Command::Cmdb(cmd) => cmdb::run(global, cmd),
        Command::Netdev(cmd) => netdev::run(global, cmd),
        Command::Config(cmd) => config_items::run(global, cmd),
        Command::Audit(cmd) => audit::run(global, cmd),
        Command::Store(cmd) => store::run(global, cmd),
        Command::Meta { out, applets } => meta::write_meta(&out, &applets),
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "opslet", &mut buf);
            std::io::Write::write_all(&mut stdio::stdout(), &buf).map(|()| 0).map_err(|e| Error::Internal(format!("writing: {e}")))
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(<Cli as clap::CommandFactory>::command())
                .render(&mut buf)
                .and_then(|()| std::io::Write::write_all(&mut stdio::stdout(), &buf))
                .map(|()| 0)
                .map_err(|e| Error::Internal(format!("writing the man page: {e}")))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

impl Command {
    /// Whether the command opens the data dir (and so goes to a server that holds it).
    fn needs_data_dir(&self) -> bool {
        !matches!(
            self,
            Command::New(_)
                | Command::Check(_)
                | Command::Test(_)
                | Command::Serve(_)
                | Command::Worker(_)
                | Command::Meta { .. }
                | Command::Completions { .. }
                | Command::Man
                | Command::Sign(_)
                | Command::Key(_)
        )
    }

    /// Whether the command reads its stdin.
    fn reads_stdin(&self) -> bool {
        matches!(self, Command::User(auth::UserCmd::Passwd { file: None, .. }) | Command::Secret(auth::SecretCmd::Set { file: None, .. }))
    }

    /// The paths of the caller's machine the command names (not `run`'s target, which may be
    /// a registry name), and what it does with each.
    fn paths_mut(&mut self) -> Vec<(PathUse, &mut PathBuf)> {
        use PathUse::*;
        match self {
            Command::Publish(a) => {
                let mut v = vec![(Folder, &mut a.path)];
                if let Some(k) = &mut a.sign_key {
                    v.push((Local, k));
                }
                v
            }
            Command::Export(a) => vec![(Write, &mut a.output)],
            Command::Run(a) => a.record.as_mut().map(|f| vec![(Write, f)]).unwrap_or_default(),
            Command::Import(a) => vec![(Read, &mut a.file)],
            Command::User(auth::UserCmd::Passwd { file: Some(f), .. }) | Command::Secret(auth::SecretCmd::Set { file: Some(f), .. }) => {
                vec![(Read, f)]
            }
            Command::Cmdb(cmdb::CmdbCmd::Import { file: Some(f), .. }) => vec![(Read, f)],
            Command::Cmdb(cmdb::CmdbCmd::Export { output: Some(f), .. }) => vec![(Write, f)],
            Command::Config(config_items::ConfigCmd::Set { file, .. }) => vec![(Item, file)],
            Command::Config(config_items::ConfigCmd::Watch { dir, .. }) => vec![(Watch, dir)],
            Command::Audit(audit::AuditCmd::Verify { anchor: Some(f), .. }) => vec![(Read, f)],
            Command::Audit(audit::AuditCmd::Anchor { to: Some(f) }) => vec![(Append, f)],
            Command::Artifact(a) => match a.path_mut() {
                Some((false, f)) => vec![(Read, f)],
                Some((true, f)) => vec![(Write, f)],
                None => vec![],
            },
            _ => vec![],
        }
    }

    /// Makes the command's relative paths relative to `cwd` (the CLI's, in the server).
    fn absolutize(&mut self, cwd: &std::path::Path) {
        if let Command::Run(a) = self {
            let p = std::path::Path::new(&a.target);
            if p.is_relative() && (cwd.join(p).is_dir() || a.target.contains('/') || a.target.starts_with('.')) {
                let resolved = cwd.join(p).to_string_lossy().into_owned();
                stdio::show_as(resolved.clone(), a.target.clone());
                a.given = Some(std::mem::replace(&mut a.target, resolved));
            }
        }
        for (_, p) in self.paths_mut() {
            if p.is_relative() {
                let resolved = cwd.join(&*p);
                stdio::show_as(resolved.display().to_string(), p.display().to_string());
                *p = resolved;
            }
        }
    }
}

/// What a command does with a path it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathUse {
    /// Reads the file.
    Read,
    /// Reads a config item file and the `template_file` beside it.
    Item,
    /// Reads the folder's files.
    Folder,
    /// Writes the file.
    Write,
    /// Watches the folder for changes.
    Watch,
    /// Appends to the file (where it is: not through a server on another machine).
    Append,
    /// Reads a file that must not leave this machine (a signing key).
    Local,
}

/// Host diagnostics (not applet logs) go to stderr, filtered by `OPSLET_LOG` (default `warn`,
/// `info` for `serve`), as JSON lines when `OPSLET_LOG_FORMAT=json`.
fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("OPSLET_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if std::env::var("OPSLET_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.with_ansi(stdio::is_terminal(stdio::Stream::Err)).try_init()
    };
}

pub(crate) fn report(e: &Error) -> i32 {
    match e {
        Error::Yanked { .. } => errln!("error: {e}; pass --allow-yanked to run it anyway"),
        _ => errln!("error: {e}"),
    }
    e.exit_code()
}

/// A clap parser for an enum of a layer below, which lists its values (`ALL`, `name`,
/// `describe`): the domain types know nothing of clap.
pub(crate) fn choice<T: Copy + Send + Sync + 'static>(
    all: &'static [T],
    name: fn(T) -> &'static str,
    help: fn(T) -> &'static str,
) -> impl clap::builder::TypedValueParser<Value = T> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(all.iter().map(|v| PossibleValue::new(name(*v)).help(help(*v))))
        .map(move |s| *all.iter().find(|v| name(**v) == s).expect("clap accepts only the listed values"))
}
