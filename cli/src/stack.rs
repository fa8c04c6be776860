//! A local freshet stack made of real processes: a nats-server with JetStream on a free loopback
//! port and its own store folder, and function binaries pointed at it. `freshet demo` and the
//! integration tests both use it; every process it starts is ended by pid when its handle drops.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use freshet::runtime::function::EXIT_LEASE_LOST;

/// The oldest nats-server freshet works with: KV creation and multi-filter consumers need 2.10.
pub const MIN_NATS_SERVER: (u32, u32) = (2, 10);

/// Finds a nats-server binary: `$FRESHET_NATS_SERVER`, then the project's `.tools/venv/bin`
/// (where `tools/install.sh` puts it), then `$PATH`. Refuses one older than 2.10.
pub fn find_nats_server() -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = std::env::var_os("FRESHET_NATS_SERVER") {
        candidates.push(path.into());
    }
    for start in [std::env::current_dir().ok(), std::env::current_exe().ok()]
        .into_iter()
        .flatten()
    {
        for dir in start.ancestors() {
            candidates.push(dir.join(".tools/venv/bin/nats-server"));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|dir| dir.join("nats-server")));
    }
    let found = candidates.into_iter().find(|p| p.is_file()).context(
        "no nats-server found: run tools/install.sh (or `make tools`), or set FRESHET_NATS_SERVER",
    )?;
    let output = Command::new(&found)
        .arg("--version")
        .output()
        .with_context(|| format!("running {}", found.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().rsplit('v').next().unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < MIN_NATS_SERVER {
        bail!(
            "{} is nats-server {version}; freshet needs 2.10 or newer (tools/install.sh installs one)",
            found.display()
        );
    }
    Ok(found)
}

/// A free TCP port on the loopback interface.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Sends a signal to a process this stack started (and only to such a process: `child` is ours).
#[allow(unsafe_code)]
pub fn signal(child: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the worst case is ESRCH for a child that
    // already exited and was not yet reaped, which still names our own child.
    unsafe {
        libc::kill(pid, signal);
    }
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A nats-server with JetStream, listening on 127.0.0.1.
pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    store_dir: PathBuf,
    log_file: PathBuf,
}

impl NatsServer {
    /// Starts a server on a free port, storing JetStream data under `store_dir`.
    pub fn start(store_dir: &Path) -> anyhow::Result<NatsServer> {
        let mut server = NatsServer {
            binary: find_nats_server()?,
            child: None,
            port: free_port()?,
            store_dir: store_dir.to_path_buf(),
            log_file: store_dir.join("nats-server.log"),
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.store_dir)?;
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store_dir)
            .args(["-l"])
            .arg(&self.log_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not listen on port {} within 10 s; see {}",
                    self.port,
                    self.log_file.display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server (SIGTERM, then SIGKILL after 5 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_with_timeout(&mut child, Duration::from_secs(5))?.is_none() {
                child.kill()?;
                child.wait()?;
            }
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, as a network
    /// pause looks to its clients. [`resume`](Self::resume) undoes it.
    pub fn pause(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGSTOP);
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&self) {
        if let Some(child) = &self.child {
            signal(child, libc::SIGCONT);
        }
    }

    /// Stops and starts the server on the same port and store, as an operator's restart would.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_after(Duration::ZERO)
    }

    /// Stops the server, leaves it down for `down` (long enough, say, for clients' requests to
    /// time out), and starts it again on the same port and store.
    pub fn restart_after(&mut self, down: Duration) -> anyhow::Result<()> {
        self.stop()?;
        std::thread::sleep(down);
        self.start_again()
    }

    /// Starts a stopped server again on the same port and store; returns once it listens.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("nats-server on port {} is already running", self.port);
        }
        self.launch()
    }

    /// Kills the server (SIGKILL: no goodbye to its clients, whatever they had in flight is
    /// lost), leaves it down for `down`, and starts it again on the same port and store.
    pub fn kill_and_restart_after(&mut self, down: Duration) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        std::thread::sleep(down);
        self.start_again()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Where the workspace's binaries are: beside the running executable, or one folder up for test
/// executables, which cargo puts in `target/<profile>/deps`.
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has no folder")?;
    Ok(if dir.ends_with("deps") {
        dir.parent().context("deps has no parent")?.to_path_buf()
    } else {
        dir.to_path_buf()
    })
}

/// The executable that runs `name`: a function's binary carries the project's prefix
/// (`featurize` runs `freshet-featurize`), so it cannot clash with other programs on a `PATH`;
/// any other name (`freshet`, a benchmark tool) is its own executable.
pub fn executable_of(name: &str) -> String {
    match name {
        "featurize" | "train" | "drift" | "predict" => format!("freshet-{name}"),
        other => other.to_string(),
    }
}

/// One function (or CLI) process of the stack.
pub struct FunctionProcess {
    name: String,
    running: Arc<Mutex<Running>>,
    /// Restarts the process when it exits with [`EXIT_LEASE_LOST`] (see
    /// [`FunctionProcess::spawn_restarting`]).
    watcher: Option<std::thread::JoinHandle<()>>,
}

/// What a process handle holds, shared with its watcher.
struct Running {
    child: Option<Child>,
    /// Set once the stack ends the process on purpose: the watcher starts nothing after that.
    stopping: bool,
    restarts: u32,
}

/// How to start a process, kept to start it again.
struct Launch {
    path: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    log: PathBuf,
}

impl Launch {
    fn start(&self, append: bool) -> anyhow::Result<Child> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&self.log)
            .with_context(|| format!("creating {}", self.log.display()))?;
        Command::new(&self.path)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", self.path.display()))
    }
}

impl FunctionProcess {
    /// Starts `binary` from [`bin_dir`] with `args` and `envs`; its stderr goes to `log`.
    pub fn spawn(
        binary: &str,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<FunctionProcess> {
        Self::start(binary, args, envs, log, false)
    }

    /// Starts `binary` as [`spawn`](Self::spawn) does, and starts it again whenever it exits
    /// with [`EXIT_LEASE_LOST`]: a function that lost its lease (cut off from the servers for
    /// longer than the lease lives) exits so as never to work beside the new holder, and
    /// counts on being restarted, as Kubernetes, Compose and `make up` do. Any other exit is
    /// left for the caller to see. The restart appends to the same log.
    pub fn spawn_restarting(
        binary: &str,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<FunctionProcess> {
        Self::start(binary, args, envs, log, true)
    }

    fn start(
        binary: &str,
        args: &[String],
        envs: &[(String, String)],
        log: &Path,
        restarting: bool,
    ) -> anyhow::Result<FunctionProcess> {
        let path = bin_dir()?.join(executable_of(binary));
        if !path.is_file() {
            bail!(
                "{} is missing: build the workspace first (cargo build --workspace)",
                path.display()
            );
        }
        let launch = Launch {
            path,
            args: args.to_vec(),
            envs: envs.to_vec(),
            log: log.to_path_buf(),
        };
        let running = Arc::new(Mutex::new(Running {
            child: Some(launch.start(false)?),
            stopping: false,
            restarts: 0,
        }));
        let watcher = restarting.then(|| {
            let running = running.clone();
            std::thread::spawn(move || restart_on_lease_loss(&launch, &running))
        });
        Ok(FunctionProcess {
            name: binary.to_string(),
            running,
            watcher,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn pid(&self) -> Option<u32> {
        self.running().child.as_ref().map(Child::id)
    }

    /// How many times the process was started again after losing its lease.
    pub fn restarts(&self) -> u32 {
        self.running().restarts
    }

    /// Whether the process has exited (and how).
    pub fn try_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.running().child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => Ok(None),
        }
    }

    /// Takes the child out of the handle for the stack to end it, and stops restarts.
    fn stop(&mut self) -> Option<Child> {
        let mut running = self.running();
        running.stopping = true;
        running.child.take()
    }

    /// Sends SIGTERM and waits up to `timeout` for a graceful exit; returns its status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut child = self.stop().context("process already stopped")?;
        signal(&child, libc::SIGTERM);
        match wait_with_timeout(&mut child, timeout)? {
            Some(status) => Ok(status),
            None => {
                child.kill()?;
                child.wait()?;
                bail!("{} did not exit within {timeout:?} of SIGTERM", self.name)
            }
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.stop() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

/// Watches a process started by [`FunctionProcess::spawn_restarting`] until the stack stops it.
fn restart_on_lease_loss(launch: &Launch, running: &Mutex<Running>) {
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let mut running = running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if running.stopping {
            return;
        }
        let lost_lease = running.child.as_mut().is_some_and(|child| {
            matches!(child.try_wait(), Ok(Some(status)) if status.code() == Some(EXIT_LEASE_LOST))
        });
        if lost_lease {
            match launch.start(true) {
                Ok(child) => {
                    running.child = Some(child);
                    running.restarts += 1;
                }
                // Left exited, for the caller to see.
                Err(_) => return,
            }
        }
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.stop() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(watcher) = self.watcher.take() {
            let _ = watcher.join();
        }
    }
}
