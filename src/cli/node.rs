//! `tandem node`: runs one node until Ctrl-C or SIGTERM, then shuts down cleanly.
//!
//! Start-up prints one line to stdout, `tandem node listening on http://HOST:PORT`, which
//! scripts and tests read to learn the port when listening on port 0.
//!
//! Shutdown order, so nothing acknowledged is lost and nothing in flight is half-done:
//! refuse new ingestion (503 + Retry-After) → let in-flight requests finish → stop Raft →
//! fsync the state.
//!
//! SIGHUP re-reads the configuration and puts its keys and quotas in force (see
//! [`Prepared::reload_keys_on_hangup`]); nothing else changes until a restart.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::auth::Keys;
use crate::api::{self, AppState};
use crate::config::{Config, ConfigError};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The node did not start.
    #[error(transparent)]
    Start(#[from] crate::node::NodeError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server error: {0}")]
    Serve(std::io::Error),
    /// The read threads could not be started.
    #[error("cannot start the read threads: {0}")]
    ReadThreads(std::io::Error),
}

/// A node whose storage and Raft are running and whose socket is bound, not yet serving.
pub struct Prepared {
    state: AppState,
    listener: TcpListener,
    /// The address actually bound.
    pub addr: SocketAddr,
}

/// Binds the socket, then starts the node (so it can advertise the bound address).
pub async fn prepare(config: Config) -> Result<Prepared, ServeError> {
    let listener = TcpListener::bind(&config.node.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.node.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(ServeError::Serve)?;
    let advertise = if config.cluster.advertise_url.is_empty() {
        format!("http://{addr}")
    } else {
        config.cluster.advertise_url.clone()
    };
    let node = crate::node::start(&config, advertise).await?;
    let state = AppState::new(node, Arc::new(config)).map_err(ServeError::ReadThreads)?;
    Ok(Prepared {
        state,
        listener,
        addr,
    })
}

impl Prepared {
    /// Serves until `shutdown` completes, then shuts down in order (see the module doc).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let node = Arc::clone(&self.state.node);
        let stopping = Arc::clone(&node);
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new writes, finishing in-flight requests");
            stopping.begin_shutdown();
        };
        let served = api::serve(self.listener, self.state, shutdown).await;
        node.shutdown().await;
        tracing::info!("stopped");
        served.map_err(ServeError::Serve)
    }
}

impl Prepared {
    /// On every SIGHUP, loads the configuration with `load` (file, environment and flags,
    /// as at start) and, if it is valid, replaces the keys and quotas with its own. An
    /// invalid configuration changes nothing and is logged with every problem.
    pub fn reload_keys_on_hangup(
        &self,
        load: impl Fn() -> Result<Config, ConfigError> + Send + Sync + 'static,
    ) -> std::io::Result<()> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = signal(SignalKind::hangup())?;
            let keys = Arc::clone(&self.state.keys);
            let running = Arc::clone(&self.state.config);
            let load = Arc::new(load);
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    let load = Arc::clone(&load);
                    match tokio::task::spawn_blocking(move || load()).await {
                        Ok(loaded) => reload_keys(&keys, &running, loaded),
                        Err(error) => tracing::error!(%error, "SIGHUP: reload failed"),
                    }
                }
            });
        }
        #[cfg(not(unix))]
        let _ = load;
        Ok(())
    }
}

fn reload_keys(keys: &Keys, running: &Config, loaded: Result<Config, ConfigError>) {
    let config = match loaded {
        Ok(config) => config,
        Err(error) => {
            tracing::error!("SIGHUP: keys unchanged, the configuration was refused: {error}");
            return;
        }
    };
    let changes = keys.reload(&config);
    tracing::info!(
        added = ?changes.added,
        removed = ?changes.removed,
        "SIGHUP: keys and quotas reloaded"
    );
    let without_keys = |config: &Config| Config {
        sources: Vec::new(),
        auth: crate::config::AuthConfig {
            admin_key: String::new(),
            keys: Vec::new(),
            ..config.auth.clone()
        },
        quotas: Default::default(),
        ..config.clone()
    };
    if without_keys(running) != without_keys(&config) {
        tracing::warn!(
            "SIGHUP: settings other than keys and quotas changed too; they apply at the next restart"
        );
    }
}

/// Completes on SIGHUP (never where there is none). `tandem up` stops on it: its nodes
/// catch SIGHUP to reload keys, so a closed terminal would otherwise leave them running.
pub async fn hangup() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangups) = signal(SignalKind::hangup()) {
            hangups.recv().await;
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn termination() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
