//! Starting a listener with a graceful shutdown: the HTTP listener and the
//! control socket are started and stopped the same way.

use axum::{serve::Listener, Router};
use tokio::{sync::oneshot, task::JoinHandle};

/// A listener serving on a task of its own.
pub struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Serves `router` on `listener` until [`Server::stop`].
pub fn spawn<L>(listener: L, router: Router) -> Server
where
    L: Listener,
    L::Addr: std::fmt::Debug,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Server { stop, task }
}

impl Server {
    /// Stops accepting, lets requests in progress finish, and returns when
    /// they have.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
