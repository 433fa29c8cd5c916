//! Reloading the runbook directory when its files change (inotify), as
//! SIGHUP does. Changes are gathered for a moment first: an editor's save
//! is several events, and one reload should see the finished file.

use std::{path::PathBuf, sync::Arc, time::Duration};

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::mpsc;

use super::engine::Engine;

/// How long to wait after a change for the next one before reloading.
const SETTLE: Duration = Duration::from_millis(300);

/// Watches `dir` and calls `on_reload` with the reload's errors after each
/// settled change. Runs until the task is dropped; a directory that cannot
/// be watched is logged, and SIGHUP still works.
pub async fn watch<F, Fut>(engine: Arc<Engine>, dir: PathBuf, on_reload: F)
where
    F: Fn(Arc<Engine>, Vec<super::load::FileError>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = match notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    }) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!("cannot watch {} for changes ({e}); send SIGHUP to reload runbooks", dir.display());
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {} for changes ({e}); send SIGHUP to reload runbooks", dir.display());
        return;
    }
    while rx.recv().await.is_some() {
        // Let the burst of events of one save settle.
        loop {
            match tokio::time::timeout(SETTLE, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        tracing::info!("{} changed: reloading the runbooks", dir.display());
        let errors = engine.reload().await;
        on_reload(engine.clone(), errors).await;
    }
}
