//! Network faults on loopback: a TCP forwarder in front of a server's port that can cut the
//! link between two processes and restore it, for tests of partitions without a second host.
//!
//! A [`Link`] listens on a free loopback port and forwards every connection to a target port.
//! It knows which process dialed each connection (from `/proc`: the socket's inode and the
//! processes holding it), so it can isolate one process: while a pid is isolated, its open
//! connections through the link are closed and its new ones refused, whichever side it is on.
//! Put a link in front of every cluster port of a NATS cluster, and have each server advertise
//! its link, and all route traffic crosses links: isolating a node on every link is a network
//! partition of that node, while it keeps running and its clients keep talking to it.

use std::collections::BTreeSet;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A cuttable TCP forwarder on loopback (see the module documentation). Stops when dropped.
pub struct Link {
    port: u16,
    isolated: watch::Sender<BTreeSet<u32>>,
    accepting: JoinHandle<()>,
}

impl Link {
    /// Starts forwarding a free loopback port to `127.0.0.1:target_port`.
    pub async fn start(target_port: u16) -> anyhow::Result<Link> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let (isolated, _) = watch::channel(BTreeSet::new());
        let watcher = isolated.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((inbound, peer)) = listener.accept().await {
                let mut isolated = watcher.subscribe();
                tokio::spawn(async move {
                    // Refused at once, before the target sees a connection, while either end
                    // is isolated: only the isolated pids' sockets are looked at, which is fast.
                    let dialer_socket = socket_inode(peer.port(), port);
                    let listening = socket_inode(target_port, 0);
                    let refused = isolated.borrow().iter().any(|&pid| {
                        [dialer_socket, listening]
                            .into_iter()
                            .flatten()
                            .any(|inode| holds(pid, inode))
                    });
                    if refused {
                        return;
                    }
                    let dialer = dialer_socket.and_then(process_holding);
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    // Who accepted, from the target's end of this very connection: the
                    // listening socket may not have existed when the dialer came (a server
                    // still starting), and the process behind a port can change (a restart).
                    // Until the server accepts it, the kernel holds its end with no inode.
                    let ours = outbound.local_addr().map(|a| a.port()).unwrap_or_default();
                    let mut acceptor = None;
                    for _ in 0..50 {
                        acceptor = socket_inode(target_port, ours)
                            .filter(|&inode| inode != 0)
                            .and_then(process_holding);
                        if acceptor.is_some() {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    }
                    let cut = |set: &BTreeSet<u32>| {
                        dialer.is_some_and(|pid| set.contains(&pid))
                            || acceptor.is_some_and(|pid| set.contains(&pid))
                    };
                    if cut(&isolated.borrow()) {
                        return;
                    }
                    let (mut inbound, mut outbound) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = async { isolated.wait_for(|set| cut(set)).await.map(|_| ()) } => {
                            let _ = inbound.shutdown().await;
                            let _ = outbound.shutdown().await;
                        }
                    }
                });
            }
        });
        Ok(Link {
            port,
            isolated,
            accepting,
        })
    }

    /// The loopback port to dial instead of the target's.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts `pid` off: its connections through this link close, and new ones are refused.
    pub fn isolate(&self, pid: u32) {
        self.isolated.send_modify(|set| {
            set.insert(pid);
        });
    }

    /// Lets every process talk through this link again.
    pub fn heal(&self) {
        self.isolated.send_modify(BTreeSet::clear);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

/// The inode of the TCP socket from `local_port` to `remote_port` (0: a listening socket), from
/// `/proc/net/tcp{,6}`.
fn socket_inode(local_port: u16, remote_port: u16) -> Option<u64> {
    let port = |address: &str| {
        address
            .rsplit(':')
            .next()
            .and_then(|hex| u16::from_str_radix(hex, 16).ok())
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines().skip(1).find_map(|line| {
                let columns: Vec<&str> = line.split_whitespace().collect();
                let (local, remote, inode) = (columns.get(1)?, columns.get(2)?, columns.get(9)?);
                (port(local)? == local_port && port(remote)? == remote_port)
                    .then(|| inode.parse().ok())
                    .flatten()
            })
        })
}

/// The process with a file descriptor on socket `inode`, if any (this process's own sockets
/// are not looked at: the link itself holds one end of every connection).
fn process_holding(inode: u64) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            (pid != me && holds(pid, inode)).then_some(pid)
        })
}

/// Whether process `pid` has a file descriptor on socket `inode`.
fn holds(pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
        fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};
    use std::time::Duration;
    use tokio::io::{AsyncBufReadExt, BufReader};

    /// The first line a NATS server sends on a new connection (its INFO), or `None` when the
    /// connection is closed or silent.
    async fn greeting(port: u16) -> Option<String> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut stream = BufReader::new(stream);
        let mut line = String::new();
        let read = stream.read_line(&mut line);
        match tokio::time::timeout(Duration::from_secs(2), read).await {
            Ok(Ok(n)) if n > 0 => Some(line),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_link_cuts_a_process_off_and_lets_it_back() -> anyhow::Result<()> {
        let port = freshet_cli::stack::free_port()?;
        let mut server = Command::new(freshet_cli::stack::find_nats_server()?)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let link = Link::start(port).await?;
        let outcome = async {
            let first = crate::eventually(Duration::from_secs(10), "the server greets", || {
                greeting(link.port())
            })
            .await?;
            anyhow::ensure!(first.starts_with("INFO "), "{first}");

            // An open connection is closed, and a new one refused, while the server is isolated.
            let held = TcpStream::connect(("127.0.0.1", link.port())).await?;
            let mut held = BufReader::new(held);
            let mut line = String::new();
            held.read_line(&mut line).await?;
            link.isolate(server.id());
            line.clear();
            let after =
                tokio::time::timeout(Duration::from_secs(5), held.read_line(&mut line)).await;
            anyhow::ensure!(
                matches!(after, Ok(Ok(0)) | Ok(Err(_))),
                "still open: {after:?} {line}"
            );
            anyhow::ensure!(
                greeting(link.port()).await.is_none(),
                "a new connection got through"
            );

            link.heal();
            let again = greeting(link.port()).await.unwrap_or_default();
            anyhow::ensure!(again.starts_with("INFO "), "not healed: {again}");
            Ok(())
        }
        .await;
        let _ = server.kill();
        let _ = server.wait();
        outcome
    }
}
