//! Shared set-up for Huren's binaries: logging and shutdown signals. The binaries themselves
//! stay thin: parse flags, load configuration, call into the `huren-hub` and `huren-agent`
//! libraries.

use tracing_subscriber::EnvFilter;

/// Log line format.
#[derive(Clone, Copy, Debug, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Sets up the one tracing subscriber: level from `RUST_LOG` (default `info`), lines to stderr.
pub fn init_tracing(format: LogFormat) {
    init_tracing_with_default(format, "info");
}

/// [`init_tracing`] with `default` as the filter when `RUST_LOG` is not set (the environment
/// is read, never written: other threads may be running).
pub fn init_tracing_with_default(format: LogFormat, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on Ctrl-C (SIGINT) or SIGTERM. On Unix the handlers are installed when this is
/// called, not when the future is first polled: a daemon that starts work before it waits
/// for the signal must not be killed by the default action of a SIGTERM sent meanwhile.
/// Call it within a tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                () = next(interrupt.as_mut()) => {}
                () = next(terminate.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}

/// Installs ring as rustls' process-wide crypto provider. Call first thing in `main`.
pub fn install_crypto_provider() {
    // Fails only if a provider is already installed, which is what we want anyway.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
