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
//! registered.

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

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        AtHome::new(self.home.clone(), Box::pin(self.pool.begin())).await
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await
    }
}

/// A future or stream polled with the home runtime's context entered.
struct AtHome<T> {
    home: Handle,
    inner: T,
}

impl<T> AtHome<T> {
    fn new(home: Handle, inner: T) -> Self {
        AtHome { home, inner }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for AtHome<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let _entered = this.home.enter();
        Pin::new(&mut this.inner).poll(cx)
    }
}

impl<S: Stream + Unpin> Stream for AtHome<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let _entered = this.home.enter();
        Pin::new(&mut this.inner).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
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

    use super::*;

    /// Open `n` pool connections at once, each in its own transaction, and use them.
    async fn use_connections(pool: &HomePool, n: usize) -> Result<(), sqlx::Error> {
        let mut txs = Vec::new();
        for _ in 0..n {
            txs.push(pool.begin().await?);
        }
        // One more statement through the pool itself, while all of those are held.
        sqlx::query("SELECT 1").execute(pool).await?;
        for mut tx in txs {
            sqlx::query("SELECT 1").execute(&mut *tx).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// Connections a connection thread opens must not depend on that thread: here it
    /// opens them, then stalls without driving its reactor (as a thread busy relaying
    /// does), and the home runtime must still use every pooled connection at once.
    /// Only PostgreSQL connections are sockets (SQLite's run on their own threads, and
    /// the in-memory test store has one connection), so this runs on PostgreSQL, which
    /// `scripts/test-all` requires.
    #[test]
    fn connections_opened_by_another_runtime_do_not_depend_on_it() {
        let home = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        for (name, store) in home.block_on(crate::store::test_backends()) {
            if name != "postgres" {
                continue;
            }
            let pool = store.pool.clone();
            let (opened_tx, opened_rx) = std::sync::mpsc::channel();
            let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
            let stalled = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let r = rt.block_on(use_connections(&pool, 4));
                opened_tx.send(r.map_err(|e| e.to_string())).unwrap();
                // The runtime lives on, but nothing drives it until the test is done.
                let _ = done_rx.recv_timeout(Duration::from_secs(20));
                drop(rt);
            });
            opened_rx.recv().unwrap().unwrap();
            let used = home.block_on(async {
                tokio::time::timeout(Duration::from_secs(5), use_connections(&store.pool, 5)).await
            });
            done_tx.send(()).unwrap();
            stalled.join().unwrap();
            match used {
                Ok(r) => r.unwrap_or_else(|e| panic!("{name}: {e}")),
                Err(_) => panic!("{name}: pooled connections waited on a stalled runtime"),
            }
            home.block_on(store.close());
        }
    }
}
