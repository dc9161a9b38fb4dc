//! Apps on ephemeral ports, and a client.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use perfkit_reference_app::{App, Config};

/// An app served on an ephemeral port until dropped.
pub struct Running {
    pub app: App,
    pub base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: Option<TempDir>,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops it as SIGTERM would: requests in flight finish, the batcher drains.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "perfkit-app-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The embedded configuration on a fresh SQLite file, small seeds.
pub fn embedded() -> (Config, TempDir) {
    let dir = TempDir::new();
    let mut config = Config::embedded();
    config.database_url = format!("sqlite://{}", dir.0.join("app.db").display());
    config.seed_agents = 200;
    config.seed_payments = 2_000;
    config.upstream_latency_ms = 200;
    (config, dir)
}

pub async fn serve(config: Config, dir: Option<TempDir>) -> Running {
    let app = App::build(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.clone().serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        app,
        base,
        stop: Some(stop),
        server: Some(server),
        _dir: dir,
    }
}

pub async fn embedded_app() -> Running {
    let (config, dir) = embedded();
    serve(config, Some(dir)).await
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}
