//! A private `redis-server` process, for tests that stop, restart or kill
//! connections of Redis and must not disturb other tests sharing the main one.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::requirement::{Requirement, Unavailable};
use crate::service::Service;

/// How long a started server may take to answer `PING`.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` child process on a free loopback port, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    /// Arguments beyond the defaults (a cluster node's).
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a private server, or returns `None` after printing why the test
    /// is skipped (no `redis-server` binary).
    ///
    /// # Panics
    ///
    /// When the server cannot start and `PERFKIT_REQUIRE_SERVICES=1`.
    pub fn start() -> Option<Self> {
        Self::start_with(&[])
    }

    /// Starts a private server with `args` added to the defaults (kept on
    /// [`restart`](Self::restart)); `None` as for [`start`](Self::start).
    ///
    /// # Panics
    ///
    /// When the server cannot start and `PERFKIT_REQUIRE_SERVICES=1`.
    pub fn start_with(args: &[&str]) -> Option<Self> {
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => {
                Requirement::from_env().enforce(&unavailable(&format!("no free port: {e}")));
                return None;
            }
        };
        let dir =
            std::env::temp_dir().join(format!("perfkit-redis-{}", crate::namespace::unique_id()));
        let mut server = Self {
            port,
            dir,
            args: args.iter().map(|arg| (*arg).to_owned()).collect(),
            child: None,
        };
        match server.spawn() {
            Ok(()) => Some(server),
            Err(reason) => {
                Requirement::from_env().enforce(&unavailable(&reason));
                None
            }
        }
    }

    /// The server's URL.
    #[must_use]
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the server runs (not [`stop`](Self::stop)ped).
    #[must_use]
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The server's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL): clients see their connections drop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open and connects are
    /// accepted by the kernel, but nothing is answered, as with a
    /// black-holed link. [`RedisServer::resume`] thaws it.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a [`RedisServer::pause`]d server (SIGCONT).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let Some(child) = &self.child else {
            return;
        };
        let status = Command::new("kill")
            .arg(signal)
            .arg(child.id().to_string())
            .status();
        assert!(
            status.is_ok_and(|status| status.success()),
            "kill {signal} of redis-server failed"
        );
    }

    /// Starts the server again on the same port, empty (a cluster node
    /// keeps its cluster configuration file, and rejoins).
    ///
    /// # Errors
    ///
    /// Why it did not answer in time.
    pub fn restart(&mut self) -> Result<(), String> {
        self.stop();
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("cannot create {}: {e}", self.dir.display()))?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server: {e}"))?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < START_TIMEOUT {
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut connection) =
                    client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut connection).is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(format!(
            "redis-server on port {} did not answer within {START_TIMEOUT:?}",
            self.port
        ))
    }
}

fn unavailable(reason: &str) -> Unavailable {
    Unavailable {
        service: Service::Redis,
        url: "a private redis-server".to_owned(),
        reason: reason.to_owned(),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A paused server must run again to die cleanly.
        self.resume();
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
