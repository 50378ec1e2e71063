//! `tandem node`: runs one node until Ctrl-C or SIGTERM, then shuts down cleanly.
//!
//! Start-up prints one line to stdout, `tandem node listening on http://HOST:PORT`, which
//! scripts and tests read to learn the port when listening on port 0.
//!
//! Shutdown order, so nothing acknowledged is lost and nothing in flight is half-done:
//! refuse new ingestion (503 + Retry-After) → let in-flight requests finish → commit what
//! is queued → stop the committer → close the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::node::Node;
use crate::store::{Store, StoreConfig};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// The store did not open.
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: String,
        source: crate::store::StoreError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another process using the port?)")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server error: {0}")]
    Serve(std::io::Error),
}

/// A node whose store is open and whose socket is bound, not yet serving.
pub struct Prepared {
    state: AppState,
    listener: TcpListener,
    /// The address actually bound.
    pub addr: SocketAddr,
}

/// Opens the store, starts the pipeline and binds the socket.
pub async fn prepare(config: Config) -> Result<Prepared, NodeError> {
    let dir = &config.node.data_dir;
    std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
        path: dir.display().to_string(),
        source,
    })?;
    let path = Store::dir_in(dir);
    let store_config = StoreConfig {
        path: path.clone(),
        cache_bytes: config.storage.cache_mb << 20,
        apply: config.apply_settings(),
        log_retain_entries: config.storage.log_retain_entries,
    };
    let started = std::time::Instant::now();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .map_err(|e| NodeError::Serve(std::io::Error::other(e)))?
        .map_err(|source| NodeError::Store {
            path: path.display().to_string(),
            source,
        })?;
    tracing::info!(path = %path.display(), elapsed_ms = started.elapsed().as_millis() as u64, "store open");
    let node = Node::start(
        Arc::new(store),
        config.limits.inflight_events_max,
        config.limits.commit_events_max,
    );
    let listener = TcpListener::bind(&config.node.listen)
        .await
        .map_err(|source| NodeError::Bind {
            addr: config.node.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    Ok(Prepared {
        state: AppState::new(Arc::new(node), Arc::new(config)),
        listener,
        addr,
    })
}

impl Prepared {
    /// Serves until `shutdown` completes, then shuts down in order (see the module doc).
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), NodeError> {
        let node = Arc::clone(&self.state.node);
        let stopping = Arc::clone(&node);
        let shutdown = async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new writes, finishing in-flight requests");
            stopping.begin_shutdown();
        };
        let served = api::serve(self.listener, self.state, shutdown).await;
        tokio::task::spawn_blocking(move || node.shutdown())
            .await
            .map_err(|e| NodeError::Serve(std::io::Error::other(e)))?;
        tracing::info!("stopped");
        served.map_err(NodeError::Serve)
    }
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
