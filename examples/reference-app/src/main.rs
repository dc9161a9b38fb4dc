//! `cargo run -p perfkit-reference-app`: the reference app on SQLite, with
//! no setup. `--help` lists the flags and their environment variables.

use clap::Parser;
use perfkit_reference_app::{App, Config};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,perfkit_reference_app=info"));
    let listen = config.listen;
    println!("perfkit reference app\n{config}");
    let app = match App::build(config).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("could not start: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The auditor's layer finds N+1 loops in each request's spans.
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_filter(filter))
        .with(app.auditor().layer());
    if let Err(error) = subscriber.try_init() {
        eprintln!("could not install the log subscriber: {error}");
    }
    let listener = match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("could not listen on {listen}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let address = listener.local_addr().map_or(listen, |address| address);
    println!("\nopen http://{address}/  (Ctrl-C to stop)");
    match app.serve(listener, shutdown()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("server error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let Ok(mut terminate) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutting down: finishing requests in flight");
}
