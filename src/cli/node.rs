//! `tandem node`: runs one node until Ctrl-C or SIGTERM, then shuts down cleanly.
//!
//! Start-up prints two lines to stdout, `tandem node peer listener on https://HOST:PORT`
//! then `tandem node listening on http(s)://HOST:PORT`, which scripts and tests read to
//! learn the ports when listening on port 0.
//!
//! A node has two listeners: the client listener (the API, health, metrics; HTTPS when
//! `[tls]` names a client certificate) and the peer listener (the `/internal/*` peer
//! routes only; mutual TLS against the cluster CA unless `tls.peer_plaintext`). Shutdown
//! stops the client listener first, and the peer listener only once in-flight client
//! requests are answered: their writes still need the other nodes.
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
use crate::node::Advertised;
use crate::node::tls::NodeTls;

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

/// A node whose storage and Raft are running and whose sockets are bound, not yet serving.
pub struct Prepared {
    state: AppState,
    listener: TcpListener,
    peer_listener: TcpListener,
    tls: NodeTls,
    /// The client listener's address actually bound.
    pub addr: SocketAddr,
    /// The client listener's URL as bound (`http://` or `https://`).
    pub client_url: String,
    /// The peer listener's URL as bound.
    pub peer_url: String,
}

async fn bind(addr: &str) -> Result<(TcpListener, SocketAddr), ServeError> {
    let bind_error = |source| ServeError::Bind {
        addr: addr.to_owned(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
    let bound = listener.local_addr().map_err(ServeError::Serve)?;
    Ok((listener, bound))
}

/// Loads the TLS material, binds both sockets, then starts the node (so it can advertise
/// the bound addresses).
pub async fn prepare(config: Config) -> Result<Prepared, ServeError> {
    let tls = NodeTls::load(&config.tls, crate::clock::now_ms().div_euclid(1000))
        .map_err(|e| ServeError::Start(e.into()))?;
    let (listener, addr) = bind(&config.node.listen).await?;
    let (peer_listener, peer_addr) = bind(&config.node.peer_listen).await?;
    let client_url = format!("{}://{addr}", tls.client_scheme());
    let peer_url = format!("{}://{peer_addr}", tls.peer_scheme());
    let or_bound = |advertised: &str, bound: &str| {
        if advertised.is_empty() {
            bound.to_owned()
        } else {
            advertised.trim_end_matches('/').to_owned()
        }
    };
    let advertised = Advertised {
        client_url: or_bound(&config.cluster.advertise_url, &client_url),
        peer_url: or_bound(&config.cluster.advertise_peer_url, &peer_url),
    };
    let node = crate::node::start(&config, advertised, &tls).await?;
    let state = AppState::new(node, Arc::new(config)).map_err(ServeError::ReadThreads)?;
    Ok(Prepared {
        state,
        listener,
        peer_listener,
        tls,
        addr,
        client_url,
        peer_url,
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
        let (peers_stop, peers_stopped) = tokio::sync::oneshot::channel::<()>();
        let peers = tokio::spawn(api::serve_peers(
            self.peer_listener,
            self.state.clone(),
            self.tls.peer_server.clone(),
            async move {
                let _ = peers_stopped.await;
            },
        ));
        let served = api::serve(self.listener, self.state, self.tls.client_server, shutdown).await;
        let _ = peers_stop.send(());
        let peers_served = match peers.await {
            Ok(result) => result,
            Err(error) => Err(std::io::Error::other(error)),
        };
        node.shutdown().await;
        tracing::info!("stopped");
        served.and(peers_served).map_err(ServeError::Serve)
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
