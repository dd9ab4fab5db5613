//! The `wscast` binary: parse the command line, load the config, start logging, run the daemon,
//! and turn any failure into one line and an exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wscast::config::{self, LogTarget};
use wscast::daemon::{self, Daemon, EX_CONFIG, EX_OSERR};
use wscast::{logging, signals};

/// WebSocket broadcast daemon.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Config file [default: /etc/wscast/wscast.toml if present, else built-in defaults].
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the config (TLS files and log directory included) and exit: 0 valid, 78 not.
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return fail(EX_CONFIG, &e),
    };
    if cli.check_config {
        return match daemon::check(&config) {
            Ok(()) => {
                println!("wscast: configuration is valid");
                ExitCode::SUCCESS
            }
            Err(e) => fail(e.exit_code(), &e),
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => return fail(EX_OSERR, &format!("cannot start the runtime: {e}")),
    };
    let to_file = config.log.target != LogTarget::Stderr;
    let (guard, level) = match logging::init(&config.log) {
        Ok(pair) => pair,
        Err(e) => return fail(EX_CONFIG, &e),
    };
    let code = runtime.block_on(async {
        let daemon = match Daemon::bind(config, cli.config, Some(level)) {
            Ok(d) => d,
            Err(e) => return log_fail(to_file, e.exit_code(), &e),
        };
        let events = match signals::listen() {
            Ok(s) => s,
            Err(e) => return log_fail(to_file, EX_OSERR, &format!("cannot install signal handlers: {e}")),
        };
        daemon.run(events).await;
        ExitCode::SUCCESS
    });
    // Connection tasks still running after the drain deadline are cut here.
    runtime.shutdown_timeout(Duration::from_millis(500));
    drop(guard);
    code
}

fn fail(code: u8, msg: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("wscast: {msg}");
    ExitCode::from(code)
}

/// A failure after logging started: in the log, and on stderr when the log is elsewhere.
fn log_fail(to_file: bool, code: u8, msg: &dyn std::fmt::Display) -> ExitCode {
    tracing::error!("{msg}");
    if to_file {
        eprintln!("wscast: {msg}");
    }
    ExitCode::from(code)
}
