//! A read-only WireGuard UAPI socket (`/var/run/wireguard/NAME.sock`), so Debian's `wg
//! show NAME` reports the gateway's peers, handshakes and transfer counters like any
//! other WireGuard interface. `set` is refused: peers come from the database
//! (`hersectl workstations`), never from a side channel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::engine::WireGuard;

pub const SOCKET_DIR: &str = "/var/run/wireguard";
const EPERM: i32 = 1;
const EINVAL: i32 = 22;
/// A request line longer than this is not UAPI.
const MAX_LINE: usize = 256;

/// The bound socket; removed on drop.
pub struct Uapi {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Uapi {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Uapi {
    pub fn start(dir: &Path, name: &str, wg: Arc<WireGuard>) -> std::io::Result<Uapi> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
        let path = dir.join(format!("{name}.sock"));
        // A socket left by a crashed run is replaced; a live one (another process
        // answering) is not.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another process", path.display()),
            ));
        }
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((conn, _)) => {
                        let wg = wg.clone();
                        tokio::spawn(async move {
                            if let Err(e) = answer(conn, &wg).await {
                                tracing::debug!(error = %e, "UAPI client");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "UAPI accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Uapi { path, task })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn read_line(r: &mut BufReader<tokio::net::unix::OwnedReadHalf>) -> std::io::Result<Option<String>> {
    let mut line = String::new();
    let n = (&mut *r).take(MAX_LINE as u64 + 1).read_line(&mut line).await?;
    if n == 0 {
        return Ok(None);
    }
    if n > MAX_LINE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(Some(line.trim_end_matches('\n').to_owned()))
}

use tokio::io::AsyncReadExt as _;

async fn answer(conn: UnixStream, wg: &WireGuard) -> std::io::Result<()> {
    let (r, mut w) = conn.into_split();
    let mut r = BufReader::new(r);
    let Some(cmd) = read_line(&mut r).await? else {
        return Ok(());
    };
    // Both commands end with an empty line; read (and for set, ignore) up to it.
    let mut lines = 0;
    while let Some(l) = read_line(&mut r).await? {
        if l.is_empty() {
            break;
        }
        lines += 1;
        if lines > 10_000 {
            break;
        }
    }
    let body = match cmd.as_str() {
        "get=1" => format!("{}errno=0\n\n", get(wg)),
        "set=1" => format!("errno={EPERM}\n\n"),
        _ => format!("errno={EINVAL}\n\n"),
    };
    w.write_all(body.as_bytes()).await?;
    w.shutdown().await
}

fn get(wg: &WireGuard) -> String {
    let mut out = format!("listen_port={}\n", wg.local_addr().port());
    for p in wg.status() {
        out.push_str(&format!("public_key={}\n", hex::encode(p.public_key.as_bytes())));
        if let Some(e) = &p.endpoint {
            out.push_str(&format!("endpoint={e}\n"));
        }
        if let Some(at) = p.last_handshake {
            out.push_str(&format!(
                "last_handshake_time_sec={}\nlast_handshake_time_nsec={}\n",
                at / 1_000_000,
                (at % 1_000_000) * 1000
            ));
        }
        out.push_str(&format!(
            "rx_bytes={}\ntx_bytes={}\npersistent_keepalive_interval=0\nallowed_ip={}/32\nprotocol_version=1\n",
            p.rx_bytes, p.tx_bytes, p.address
        ));
    }
    out
}
