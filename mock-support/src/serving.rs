//! The lifetime of a running mock's tasks. Server tasks watch a shutdown flag (a `tokio::sync::watch` of
//! `bool`): [`Serving::shutdown`] raises it and waits for them to drain (each server bounds its own grace);
//! background tasks (for example a propagation tick) are aborted. Dropping a [`Serving`] raises the flag and
//! aborts everything, so a mock dropped in a test never outlives it.

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The tasks of one running mock.
#[derive(Debug)]
pub struct Serving {
    shutdown: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Default for Serving {
    fn default() -> Self {
        Self::new()
    }
}

impl Serving {
    pub fn new() -> Self {
        Self {
            shutdown: watch::channel(false).0,
            servers: Vec::new(),
            background: Vec::new(),
        }
    }

    /// The flag a server task watches: `true` means stop accepting and drain.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Spawns a server task; [`Serving::shutdown`] waits for it.
    pub fn spawn_server(&mut self, server: impl Future<Output = ()> + Send + 'static) {
        self.servers.push(tokio::spawn(server));
    }

    /// Spawns a background task; it is aborted at shutdown.
    pub fn spawn_background(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.push(tokio::spawn(task));
    }

    /// Aborts the background tasks, tells the servers to stop and waits for them.
    pub async fn shutdown(mut self) {
        self.shutdown.send_replace(true);
        for task in std::mem::take(&mut self.background) {
            task.abort();
        }
        for task in std::mem::take(&mut self.servers) {
            let _ = task.await;
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        for task in self.background.drain(..).chain(self.servers.drain(..)) {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_waits_for_servers_and_aborts_background() {
        let mut serving = Serving::new();
        let mut stop = serving.shutdown_signal();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        serving.spawn_server(async move {
            let _ = stop.wait_for(|s| *s).await;
            let _ = done_tx.send(());
        });
        serving.spawn_background(std::future::pending());
        serving.shutdown().await;
        assert!(
            done_rx.await.is_ok(),
            "the server saw the flag and finished"
        );
    }
}
