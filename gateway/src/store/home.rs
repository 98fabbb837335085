//! The database pool, bound to the runtime that opened it.
//!
//! Each SSH connection runs on its own single-threaded runtime (`conn_threads`), and
//! calls the store from there. A PostgreSQL connection is a TCP socket registered with
//! the reactor of the runtime that opens it, and sqlx opens pool connections lazily, in
//! whichever task first finds the pool empty. Without care, a pool connection opened by
//! a session would then be driven by that session's thread for the rest of its life:
//! the revocation watcher and the audit trail on the main runtime would wait on a thread
//! busy relaying, and would fail once that thread ended.
//!
//! [`HomePool`] runs every pool acquisition with the home runtime's context entered, so
//! the sockets and timers sqlx creates there belong to the home runtime, whoever asks.
//! Statements on a connection already open need nothing: its socket stays where it was
//! registered. [`HomeTx`] ends transactions there too, since sqlx returns a connection
//! (and rolls back a dropped transaction) from a task spawned where that happens.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::future::BoxFuture;
use futures_core::stream::BoxStream;
use futures_core::Stream;
use sqlx::any::{Any, AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{AnyPool, Describe, Either, Execute, Executor, SqlStr, Transaction};
use tokio::runtime::Handle;

/// An [`AnyPool`] whose new connections always belong to the runtime that made it.
#[derive(Clone)]
pub(crate) struct HomePool {
    pool: AnyPool,
    home: Handle,
}

impl fmt::Debug for HomePool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HomePool")
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl HomePool {
    /// Bind `pool` to the runtime this is called from.
    pub(crate) fn here(pool: AnyPool) -> Self {
        HomePool {
            pool,
            home: Handle::current(),
        }
    }

    /// The pool itself, for what runs on the home runtime only (migrations, closing).
    pub(crate) fn inner(&self) -> &AnyPool {
        &self.pool
    }

    pub(crate) async fn begin(&self) -> Result<HomeTx, sqlx::Error> {
        let tx = AtHome::new(self.home.clone(), Box::pin(self.pool.begin())).await?;
        Ok(HomeTx {
            home: self.home.clone(),
            tx: Some(tx),
        })
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await
    }
}

/// A transaction whose end (commit, or rollback when dropped) runs with the home runtime
/// entered: sqlx returns the connection to the pool, and rolls back a dropped
/// transaction, from a task spawned where that happens. On a busy connection thread an
/// abandoned audit append would keep the audit chain's row lock until that task ran.
pub(crate) struct HomeTx {
    home: Handle,
    /// `None` only once committed or dropped.
    tx: Option<Transaction<'static, Any>>,
}

impl HomeTx {
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        match self.tx.take() {
            Some(tx) => AtHome::new(self.home.clone(), Box::pin(tx.commit())).await,
            None => Ok(()),
        }
    }

    /// The transaction's connection, for statements.
    pub(crate) fn conn(&mut self) -> Result<&mut sqlx::AnyConnection, sqlx::Error> {
        match self.tx.as_mut() {
            Some(tx) => Ok(&mut **tx),
            None => Err(sqlx::Error::Protocol("transaction already ended".into())),
        }
    }
}

impl Drop for HomeTx {
    fn drop(&mut self) {
        let _entered = self.home.enter();
        drop(self.tx.take());
    }
}

/// A future or stream polled, and dropped, with the home runtime's context entered
/// (sqlx spawns the task that returns a connection to the pool where it is dropped).
struct AtHome<T> {
    home: Handle,
    /// `None` only once dropped.
    inner: Option<T>,
}

impl<T> AtHome<T> {
    fn new(home: Handle, inner: T) -> Self {
        AtHome {
            home,
            inner: Some(inner),
        }
    }
}

impl<T> Drop for AtHome<T> {
    fn drop(&mut self) {
        let _entered = self.home.enter();
        drop(self.inner.take());
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for AtHome<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.home.enter();
        match this.inner.as_mut() {
            Some(f) => Pin::new(f).poll(cx),
            None => Poll::Pending,
        }
    }
}

impl<S: Stream + Unpin> Stream for AtHome<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let _entered = this.home.enter();
        match this.inner.as_mut() {
            Some(s) => Pin::new(s).poll_next(cx),
            None => Poll::Ready(None),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.as_ref().map_or((0, Some(0)), |s| s.size_hint())
    }
}

impl<'p> Executor<'p> for &'p HomePool {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(self, query: E) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        Box::pin(AtHome::new(self.home.clone(), (&self.pool).fetch_many(query)))
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, Any>,
    {
        Box::pin(AtHome::new(self.home.clone(), (&self.pool).fetch_optional(query)))
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(AtHome::new(
            self.home.clone(),
            (&self.pool).prepare_with(sql, parameters),
        ))
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>>
    where
        'p: 'e,
    {
        Box::pin(AtHome::new(self.home.clone(), (&self.pool).describe(sql)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::any::AnyPoolOptions;

    use super::*;

    /// A statement through the pool, then `n` connections at once, each in a transaction.
    async fn use_connections(pool: &HomePool, n: usize) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(pool).await?;
        let mut txs = Vec::new();
        for _ in 0..n {
            txs.push(pool.begin().await?);
        }
        for mut tx in txs {
            sqlx::query("SELECT 1").execute(tx.conn()?).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Connections a connection thread opens must not depend on that thread: here it
    /// opens them and lets them go back to the pool, then stalls without driving its
    /// reactor (as a thread busy relaying does). The home runtime must still use every
    /// pooled connection, and the pool's size forces it to use those.
    /// Only PostgreSQL connections are sockets (SQLite's run on threads of their own),
    /// so this needs the server `scripts/test-all` starts.
    #[test]
    fn connections_opened_by_another_runtime_do_not_depend_on_it() {
        let Ok(url) = std::env::var("HERSE_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("HERSE_REQUIRE_POSTGRES").is_none(),
                "HERSE_REQUIRE_POSTGRES is set but HERSE_TEST_POSTGRES_URL is not"
            );
            return;
        };
        const N: usize = 4;
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let pool = home.block_on(async {
            sqlx::any::install_default_drivers();
            let pool = AnyPoolOptions::new()
                .max_connections(N as u32)
                .connect(&url)
                .await
                .unwrap();
            HomePool::here(pool)
        });
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let other = pool.clone();
        let stalled = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async {
                use_connections(&other, N).await?;
                // Connections return to the pool from tasks spawned where they are
                // released: let those run before stalling.
                while other.inner().num_idle() < N {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<(), sqlx::Error>(())
            });
            opened_tx.send(r.map_err(|e| e.to_string())).unwrap();
            // The runtime lives on, but nothing drives it until the test is done.
            let _ = done_rx.recv_timeout(Duration::from_secs(30));
            drop(rt);
        });
        opened_rx.recv().unwrap().unwrap();
        let used =
            home.block_on(async { tokio::time::timeout(Duration::from_secs(5), use_connections(&pool, N)).await });
        done_tx.send(()).unwrap();
        stalled.join().unwrap();
        match used {
            Ok(r) => r.unwrap(),
            Err(_) => panic!("pooled connections waited on a stalled runtime"),
        }
        home.block_on(pool.close());
    }
}
