use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tolov::config::Settings;
use tolov::startup::Application;

#[derive(Parser)]
#[command(
    name = "tolov",
    version,
    about = "One payment gateway for Payme, Click, ATMOS and Halyk ePay"
)]
struct Cli {
    /// Extra configuration file layered over the built-in defaults.
    #[arg(long, global = true, env = "TOLOV_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (migrations are applied first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Check payments stuck in processing with their providers once, then exit.
    Reconcile {
        /// How long a payment must have been processing: 30s, 15m, 2h, 1d, or an RFC 3339 time.
        #[arg(long, default_value = "15m")]
        since: String,
    },
}

/// "15m" → 15 minutes ago; an RFC 3339 timestamp as it is.
fn parse_since(
    s: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = n.parse().ok()?;
    let d = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => return None,
    };
    Some(now - d)
}

/// mimalloc instead of glibc's malloc: the request path allocates many small, short-lived
/// values on two worker threads, where glibc's arenas showed in the profile (a sixth of tolov's
/// CPU, with lock waits and consolidation). Six interleaved benchmark pairs on top of the LTO
/// profile: a third less tolov CPU per Payme lifecycle (BENCHMARKS.md, item 9).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tolov: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        print!("{}", settings.to_masked_toml());
        eprintln!("configuration is valid ({:?} mode)", settings.mode);
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tolov: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tolov::telemetry::init_tracing(&settings);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve => serve(settings).await,
            Command::Migrate => {
                tolov::store::connect(&settings.database).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::CheckConfig => Ok(()),
            Command::Reconcile { since } => reconcile(settings, &since).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "tolov stopped with an error");
            eprintln!("tolov: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let grace = Duration::from_secs(settings.server.shutdown_grace_secs);
    let mode = settings.mode;
    // Installed before the port opens: a SIGTERM that arrives as soon as tolov answers (an
    // orchestrator's stop right after start-up) must find the handler, or the default action
    // kills the process instead of a graceful stop.
    let stop_requested = shutdown_signal();
    let app = Application::build(settings).await?;
    let token = app.shutdown_token();
    tracing::info!(port = app.port(), ?mode, "tolov listening");
    let server = tokio::spawn(app.run_until_stopped());
    stop_requested.await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down; finishing in-flight requests"
    );
    token.cancel();
    match tokio::time::timeout(grace, server).await {
        Ok(joined) => joined??,
        Err(_) => tracing::warn!("grace period over; abandoning unfinished requests"),
    }
    Ok(())
}

async fn reconcile(mut settings: Settings, since: &str) -> anyhow::Result<()> {
    let stuck_since = parse_since(since, chrono::Utc::now()).ok_or_else(|| {
        anyhow::anyhow!("--since must look like 30s, 15m, 2h, 1d or an RFC 3339 time")
    })?;
    // Not serving: any free local port will do for the application's own address.
    settings.server.listen = "127.0.0.1:0".parse()?;
    let app = Application::build(settings).await?;
    let report = tolov::workers::reconcile::reconcile_once(app.state(), stuck_since).await?;
    println!("{report:?}");
    Ok(())
}

/// Ctrl-C or SIGTERM. The handlers are installed when this is called, not when the returned
/// future is first polled. A handler that cannot be installed leaves that signal's default.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            async fn received(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = received(interrupt) => {},
                _ = received(terminate) => {},
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
