//! PostgreSQL connections for single statements, handed out without sqlx's pool.
//!
//! sqlx's pool pings every connection it takes back (a Sync and a wait for ReadyForQuery): one
//! extra round trip per query, which cost about a fifth of the Payme lifecycle throughput here
//! (BENCHMARKS.md). These connections go back to the idle list only when their statement ran
//! to the end, or PostgreSQL itself refused it (the protocol is then back in step); one whose
//! future was dropped mid-way, that failed on I/O, or that the server ended (FATAL) is closed
//! instead. Multi-statement
//! transactions keep using sqlx's pool (`PgStore::pool`).

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use sqlx::postgres::{
    PgConnectOptions, PgConnection, PgDatabaseError, PgQueryResult, PgRow, PgSeverity, PgStatement,
    PgTypeInfo,
};
use sqlx::{Connection, Describe, Either, Error, Execute, Executor, Postgres};
use tokio::sync::{Semaphore, SemaphorePermit};

pub struct PgConns {
    /// Idle connections with when each was opened.
    idle: Mutex<Vec<(PgConnection, Instant)>>,
    permits: Semaphore,
    options: PgConnectOptions,
    acquire_timeout: Duration,
    max_lifetime: Duration,
}

/// Connections are replaced after this long (sqlx's pool default), so server-side memory and
/// a moved database address do not live forever in an idle list.
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

impl fmt::Debug for PgConns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConns")
            .field("available", &self.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// One connection in use; see the module comment for when it goes back.
struct Lease<'a> {
    conns: &'a PgConns,
    conn: Option<PgConnection>,
    born: Instant,
    reusable: bool,
    /// The connection died under its statement (I/O, or the server ended the session): the
    /// idle ones were most likely ended with it (a restart, a failover).
    ended: bool,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a lease holds its connection until dropped")
    }

    /// Records how the statement ended: only a finished one (or a server-side refusal of the
    /// statement) leaves the connection fit for the next caller. A FATAL error means the
    /// server is ending the session (terminated backend, shutdown): that connection is dead.
    fn settle<T>(&mut self, result: &Result<T, Error>) {
        let fatal = |e: &dyn sqlx::error::DatabaseError| {
            e.try_downcast_ref::<PgDatabaseError>()
                .is_none_or(|pg| matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic))
        };
        self.reusable = match result {
            Ok(_) | Err(Error::RowNotFound) => true,
            Err(Error::Database(e)) => !fatal(e.as_ref()),
            Err(_) => false,
        };
        self.ended = match result {
            Err(Error::Io(_) | Error::Tls(_)) => true,
            Err(Error::Database(e)) => fatal(e.as_ref()),
            _ => false,
        };
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if self.ended {
            // One failed statement instead of one per idle connection; the next lease opens a
            // fresh one.
            if let Ok(mut idle) = self.conns.idle.lock() {
                idle.clear();
            }
        }
        if !self.reusable {
            return;
        }
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.conns.idle.lock()) {
            idle.push((conn, self.born));
        }
    }
}

impl PgConns {
    pub fn new(options: PgConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        PgConns {
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(max as usize),
            options,
            acquire_timeout,
            max_lifetime: MAX_LIFETIME,
        }
    }

    #[cfg(test)]
    fn with_max_lifetime(mut self, max_lifetime: Duration) -> Self {
        self.max_lifetime = max_lifetime;
        self
    }

    async fn lease(&self) -> Result<Lease<'_>, Error> {
        tokio::time::timeout(self.acquire_timeout, async {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| Error::PoolClosed)?;
            let idle = self.idle.lock().ok().and_then(|mut idle| {
                // Idle connections past their lifetime are closed here (the server sees the
                // socket close), including ones deep in the stack that a quiet period after a
                // burst would otherwise keep open.
                idle.retain(|(_, born)| born.elapsed() < self.max_lifetime);
                idle.pop()
            });
            let (conn, born) = match idle {
                Some(kept) => kept,
                None => (
                    PgConnection::connect_with(&self.options).await?,
                    Instant::now(),
                ),
            };
            Ok(Lease {
                conns: self,
                conn: Some(conn),
                born,
                reusable: false,
                ended: false,
                _permit: permit,
            })
        })
        .await
        .map_err(|_| Error::PoolTimedOut)?
    }
}

impl<'c> Executor<'c> for &'c PgConns {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        // Our statements return a handful of rows: collecting them lets the connection go
        // back before the caller looks at the first one.
        futures::stream::once(async move {
            let mut lease = self.lease().await?;
            let result: Result<Vec<_>, Error> = lease.conn().fetch_many(query).try_collect().await;
            lease.settle(&result);
            result
        })
        .map_ok(|items| futures::stream::iter(items.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(self, query: E) -> BoxFuture<'e, Result<Option<PgRow>, Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, Postgres>,
    {
        Box::pin(async move {
            let mut lease = self.lease().await?;
            let result = lease.conn().fetch_optional(query).await;
            lease.settle(&result);
            result
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut lease = self.lease().await?;
            let result = lease.conn().prepare_with(sql, parameters).await;
            lease.settle(&result);
            result
        })
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<Postgres>, Error>>
    where
        'c: 'e,
    {
        Box::pin(async move {
            let mut lease = self.lease().await?;
            let result = lease.conn().describe(sql).await;
            lease.settle(&result);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn conns(max: u32) -> PgConns {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
        let options = PgConnectOptions::from_str(&url).expect("database url");
        PgConns::new(options, max, Duration::from_millis(500))
    }

    /// Waits (up to 5 s) until none of `pids` is a live backend any more.
    async fn backends_gone(pids: &[i32]) -> bool {
        let admin = conns(1);
        for _ in 0..50 {
            let open: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                    .bind(pids)
                    .fetch_one(&admin)
                    .await
                    .expect("count");
            if open == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    async fn backend_pid(c: &PgConns) -> i32 {
        sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(c)
            .await
            .expect("PostgreSQL must be reachable at DATABASE_URL or 127.0.0.1:5432 (bash .ci/run starts it)")
    }

    #[tokio::test]
    async fn a_finished_or_refused_statement_gives_its_connection_back() {
        let c = conns(1);
        let first = backend_pid(&c).await;
        assert_eq!(
            backend_pid(&c).await,
            first,
            "reused after a finished statement"
        );
        let refused = sqlx::query("SELECT 1 / 0").execute(&c).await;
        assert!(matches!(refused, Err(Error::Database(_))));
        assert_eq!(
            backend_pid(&c).await,
            first,
            "reused after a database error, still in step"
        );
        let rows: Vec<i32> = sqlx::query_scalar("SELECT generate_series(1, 3)")
            .fetch_all(&c)
            .await
            .expect("rows");
        assert_eq!(rows, [1, 2, 3]);
        assert_eq!(backend_pid(&c).await, first);
    }

    #[tokio::test]
    async fn an_interrupted_statement_closes_its_connection() {
        let c = conns(1);
        let first = backend_pid(&c).await;
        let interrupted = tokio::time::timeout(
            Duration::from_millis(100),
            sqlx::query("SELECT pg_sleep(5)").execute(&c),
        )
        .await;
        assert!(interrupted.is_err(), "the sleep was cut short");
        let next = backend_pid(&c).await;
        assert_ne!(
            next, first,
            "a connection left mid-statement is never handed out again"
        );
        assert_eq!(backend_pid(&c).await, next);
    }

    #[tokio::test]
    async fn idle_connections_past_their_lifetime_are_closed() {
        let c = conns(2).with_max_lifetime(Duration::from_secs(1));
        let mut a = c.lease().await.expect("first");
        let mut b = c.lease().await.expect("second");
        let mut pids = Vec::new();
        for lease in [&mut a, &mut b] {
            let pid: Result<i32, Error> = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(lease.conn())
                .await;
            lease.settle(&pid);
            pids.push(pid.expect("pid"));
        }
        drop((a, b));
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let fresh = backend_pid(&c).await;
        assert!(
            !pids.contains(&fresh),
            "a new connection after the lifetime"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let admin = conns(1);
        let still_open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)")
                .bind(&pids)
                .fetch_one(&admin)
                .await
                .expect("count");
        assert_eq!(
            still_open, 0,
            "both old connections were closed, not kept idle"
        );
    }

    #[tokio::test]
    async fn connections_are_replaced_after_their_lifetime() {
        let c = conns(1).with_max_lifetime(Duration::from_secs(1));
        let first = backend_pid(&c).await;
        assert_eq!(backend_pid(&c).await, first, "young: reused");
        tokio::time::sleep(Duration::from_millis(1_200)).await;
        let second = backend_pid(&c).await;
        assert_ne!(second, first, "old: replaced");
    }

    #[tokio::test]
    async fn a_connection_the_server_ended_fails_once_and_is_replaced() {
        let c = conns(1);
        let first = backend_pid(&c).await;
        let admin = conns(1);
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(first)
            .fetch_one(&admin)
            .await
            .expect("terminate");
        assert!(ended);
        assert!(backends_gone(&[first]).await, "the backend exits");
        let failed = sqlx::query("SELECT 1").execute(&c).await;
        assert!(failed.is_err(), "the idle connection was ended under us");
        let next = backend_pid(&c).await;
        assert_ne!(next, first, "the ended connection is not handed out again");
    }

    /// A failover or restart ends every connection at once: the first statement that finds its
    /// connection dead takes the other idle ones with it, so one request fails, not one per
    /// idle connection.
    #[tokio::test]
    async fn connections_the_server_ended_together_fail_one_statement_only() {
        let c = conns(3);
        let mut leases = Vec::new();
        let mut pids = Vec::new();
        for _ in 0..3 {
            let mut lease = c.lease().await.expect("lease");
            let pid: Result<i32, Error> = sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(lease.conn())
                .await;
            lease.settle(&pid);
            pids.push(pid.expect("pid"));
            leases.push(lease);
        }
        drop(leases);
        let admin = conns(1);
        sqlx::query("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid")
            .bind(&pids)
            .execute(&admin)
            .await
            .expect("terminate");
        assert!(backends_gone(&pids).await, "the backends exit");
        let failed = sqlx::query("SELECT 1").execute(&c).await;
        assert!(failed.is_err(), "the idle connection was ended under us");
        let next = backend_pid(&c).await;
        assert!(!pids.contains(&next), "a fresh connection: {next} {pids:?}");
    }

    #[tokio::test]
    async fn waiting_for_a_connection_is_bounded() {
        let c = conns(1);
        let held = c.lease().await.expect("the only connection");
        let waited = sqlx::query("SELECT 1").execute(&c).await;
        assert!(matches!(waited, Err(Error::PoolTimedOut)), "{waited:?}");
        drop(held);
        backend_pid(&c).await;
    }
}
