//! Connection threads: each SSH connection runs, with every task it spawns (the client's
//! session, the upstream session, the relays, the inner ProxyJump server, the
//! supervisor), on one single-threaded runtime of its own thread. Connections are spread
//! over one such thread per core, to the one with the fewest live connections.
//!
//! Why: a relayed packet passes from the client's SSH session task to the target's and
//! back for the window adjustments. On tokio's work-stealing runtime those tasks sit on
//! different threads, and every packet cost a cross-thread wake-up (futex, IPI, context
//! switch). Measured with `bench/spine.sh` (512 MiB single hop, aes128-gcm): 15 600
//! context switches and 3.7 CPU-s/GiB in the gateway, against 2 900 and 2.8 with the
//! connection's tasks kept on one thread. The same design as Envoy's workers: a
//! connection belongs to a thread; parallelism comes from many connections.
//!
//! The accepting runtime keeps the listeners, the portal, WireGuard and the watchers.
//! A TCP socket is moved to its connection's thread by re-registering it there, so its
//! readiness events arrive where its tasks run.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;
use tokio_util::task::TaskTracker;

struct Worker {
    handle: Handle,
    live: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The pool of connection threads. Dropping it stops them (after `serve` has drained).
pub struct ConnectionThreads {
    workers: Vec<Worker>,
}

impl ConnectionThreads {
    /// One thread per available core (at least one).
    pub fn start() -> std::io::Result<Self> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(n)
    }

    pub fn with_threads(n: usize) -> std::io::Result<Self> {
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let rt = Builder::new_current_thread()
                .enable_all()
                // The name of this runtime's blocking-pool threads (recording syncs).
                .thread_name(format!("herse-blk-{i}"))
                .build()?;
            let handle = rt.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let live = Arc::new(AtomicUsize::new(0));
            let gone = Retired(live.clone());
            let thread = std::thread::Builder::new()
                .name(format!("herse-conn-{i}"))
                .spawn(move || {
                    let _gone = gone;
                    // Runs the connections' tasks until the pool is dropped.
                    let _ = rt.block_on(stopped);
                })?;
            workers.push(Worker {
                handle,
                live,
                stop: Some(stop),
                thread: Some(thread),
            });
        }
        Ok(ConnectionThreads { workers })
    }

    /// Run `connection` on the least busy thread, tracked by `tasks` (the drain waits for
    /// it like for any other task).
    pub fn spawn<F>(&self, tasks: &TaskTracker, connection: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.live.load(Ordering::Relaxed))
            .unwrap_or_else(|| unreachable!("at least one worker"));
        let live = LiveGuard::new(w.live.clone());
        tasks.spawn_on(
            async move {
                let _live = live;
                connection.await
            },
            &w.handle,
        );
    }

    /// Live connections per thread (for tests and metrics).
    pub fn load(&self) -> Vec<usize> {
        self.workers.iter().map(|w| w.live.load(Ordering::Relaxed)).collect()
    }
}

impl Drop for ConnectionThreads {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if let Some(stop) = w.stop.take() {
                let _ = stop.send(());
            }
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                // A thread that panicked has nothing left to clean up.
                let _ = t.join();
            }
        }
    }
}

/// Load that a thread which has ended (stopped, or a runtime panic) shows forever, so
/// that no new connection is placed on it.
const RETIRED: usize = usize::MAX / 2;

/// Marks its thread's load as [`RETIRED`] when the thread ends, however it ends.
struct Retired(Arc<AtomicUsize>);

impl Drop for Retired {
    fn drop(&mut self) {
        self.0.store(RETIRED, Ordering::Relaxed);
        if std::thread::panicking() {
            tracing::error!("a connection thread ended with a panic; it takes no new connections");
        }
    }
}

/// Counts a connection on its thread while it lives.
struct LiveGuard(Arc<AtomicUsize>);

impl LiveGuard {
    fn new(live: Arc<AtomicUsize>) -> Self {
        live.fetch_add(1, Ordering::Relaxed);
        LiveGuard(live)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Move a TCP stream accepted on another runtime to the current one, so that its
/// readiness events are delivered on the thread that polls it.
pub fn rehome(tcp: tokio::net::TcpStream) -> std::io::Result<tokio::net::TcpStream> {
    tokio::net::TcpStream::from_std(tcp.into_std()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connections_spread_and_run_on_their_thread() {
        let pool = ConnectionThreads::with_threads(2).unwrap();
        let tasks = TaskTracker::new();
        let (release, released) = tokio::sync::watch::channel(false);
        let names = Arc::new(std::sync::Mutex::new(Vec::new()));
        for _ in 0..4 {
            let names = names.clone();
            let mut released = released.clone();
            pool.spawn(&tasks, async move {
                let outer = std::thread::current().name().map(str::to_owned);
                // A task spawned inside the connection stays on its thread.
                let inner = tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                    .await
                    .unwrap();
                names.lock().unwrap().push((outer, inner));
                let _ = released.wait_for(|r| *r).await;
            });
        }
        // Two connections on each thread, chosen by load.
        for _ in 0..100 {
            if names.lock().unwrap().len() == 4 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(pool.load(), vec![2, 2]);
        for (outer, inner) in names.lock().unwrap().iter() {
            assert!(
                outer.as_deref().is_some_and(|n| n.starts_with("herse-conn-")),
                "{outer:?}"
            );
            assert_eq!(outer, inner);
        }
        release.send(true).unwrap();
        tasks.close();
        tasks.wait().await;
        assert_eq!(pool.load(), vec![0, 0]);
    }

    #[tokio::test]
    async fn a_thread_that_ended_takes_no_connections() {
        let mut pool = ConnectionThreads::with_threads(2).unwrap();
        let w0 = &mut pool.workers[0];
        w0.stop.take().unwrap().send(()).unwrap();
        w0.thread.take().unwrap().join().unwrap();
        let tasks = TaskTracker::new();
        let (release, released) = tokio::sync::watch::channel(false);
        for _ in 0..3 {
            let mut released = released.clone();
            pool.spawn(&tasks, async move {
                let _ = released.wait_for(|r| *r).await;
            });
        }
        assert_eq!(pool.load(), vec![RETIRED, 3]);
        release.send(true).unwrap();
        tasks.close();
        tasks.wait().await;
    }

    #[tokio::test]
    async fn a_rehomed_socket_works_on_its_new_thread() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pool = ConnectionThreads::with_threads(1).unwrap();
        let tasks = TaskTracker::new();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            b
        });
        let (tcp, _) = l.accept().await.unwrap();
        pool.spawn(&tasks, async move {
            let mut s = rehome(tcp).unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            s.write_all(b"pong").await.unwrap();
        });
        assert_eq!(&client.await.unwrap(), b"pong");
        tasks.close();
        tasks.wait().await;
    }
}
