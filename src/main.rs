//! The `legate` binary: Envoy's command line, validate or serve.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use legate::cli::{Mode, Options};
use legate::config::bootstrap::{self, BootstrapSpec};
use legate::server::Server;

fn main() -> ExitCode {
    let options = Options::parse();
    if let Err(e) = legate::logging::init(&options.log_level, options.component_log_level.as_deref()) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let spec = match bootstrap::load(&options).and_then(BootstrapSpec::from_proto) {
        Ok(spec) => spec,
        Err(e) => {
            // One line that names the field path, on stderr, as the exit reason.
            eprintln!(
                "error initializing configuration '{}': {e}",
                options.config_path.as_deref().unwrap_or("--config-yaml")
            );
            return ExitCode::FAILURE;
        }
    };
    if options.mode == Mode::Validate {
        println!("configuration '{}' OK", options.config_path.as_deref().unwrap_or("--config-yaml"));
        return ExitCode::SUCCESS;
    }
    let drain_time = Duration::from_secs(options.drain_time_s);
    let server = match Server::start(spec, options) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error starting legate: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(admin) = server.admin_address {
        tracing::info!(%admin, "admin address");
    }
    let shared = server.shared.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("signal runtime");
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::warn!("caught SIGTERM"),
                _ = int.recv() => tracing::warn!("caught SIGINT"),
            }
        });
        shared.begin_drain();
    });
    server.wait(drain_time);
    tracing::info!("exiting");
    ExitCode::SUCCESS
}
