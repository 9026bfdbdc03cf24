//! A TCP proxy between the server and PostgreSQL that the test controls: it can cut every
//! connection (an outage), or let one COMMIT through to PostgreSQL and then cut that
//! connection before the reply comes back (a commit whose outcome the server cannot know).
//! The server must connect with `sslmode=disable` so the proxy can see the statements.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Backend, PgDatabase, TestServer};

pub struct Proxy {
    pub port: u16,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    /// How many upcoming COMMITs to deliver and then cut before their reply.
    cut_after_commit: Arc<AtomicUsize>,
    /// How many upcoming COMMITs to cut before delivering them.
    cut_before_commit: Arc<AtomicUsize>,
    /// COMMITs cut so far (tests assert the fault really happened).
    pub cuts: Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy {
            port,
            up: Arc::new(AtomicBool::new(true)),
            conns: Arc::default(),
            cut_after_commit: Arc::default(),
            cut_before_commit: Arc::default(),
            cuts: Arc::default(),
        };
        let (up, conns) = (proxy.up.clone(), proxy.conns.clone());
        let (after, before, cuts) = (
            proxy.cut_after_commit.clone(),
            proxy.cut_before_commit.clone(),
            proxy.cuts.clone(),
        );
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if !up.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let (after, before, cuts) = (after.clone(), before.clone(), cuts.clone());
                let task = tokio::spawn(async move {
                    if let Ok(upstream) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        relay(client, upstream, after, before, cuts).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        proxy
    }

    /// A server on `pg`'s database, connected through this proxy.
    pub fn server(&self, pg: PgDatabase, env: &[(&str, &str)]) -> TestServer {
        let url = self.url_for(&pg);
        let mut env = env.to_vec();
        env.push(("DATABASE_URL", &url));
        TestServer::start_on(Backend::Postgres, Some(pg), &env)
    }

    pub fn url_for(&self, pg: &PgDatabase) -> String {
        let name = pg.url.rsplit('/').next().unwrap();
        format!(
            "postgres://postgres@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        )
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    /// The next `n` COMMITs reach PostgreSQL; their connections die before the reply.
    pub fn lose_next_commit_replies(&self, n: usize) {
        self.cut_after_commit.store(n, Ordering::SeqCst);
    }

    /// The next `n` COMMITs never reach PostgreSQL; their connections die.
    pub fn lose_next_commits(&self, n: usize) {
        self.cut_before_commit.store(n, Ordering::SeqCst);
    }

    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

fn take_one(n: &AtomicUsize) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
        .is_ok()
}

async fn relay(
    client: tokio::net::TcpStream,
    upstream: tokio::net::TcpStream,
    after: Arc<AtomicUsize>,
    before: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut up_rx, mut up_tx) = upstream.into_split();
    let severed = Arc::new(AtomicBool::new(false));
    let severed2 = severed.clone();
    // PostgreSQL → server, until the connection is severed: a reply after that never arrives.
    let replies = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match up_rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Severed: swallow the reply, but keep the server's side open until the cut (closing
            // it here would tell the server before the test's moment).
            if severed2.load(Ordering::SeqCst) {
                continue;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client_rx.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let commit = chunk.windows(6).any(|w| w == b"COMMIT");
        if commit && take_one(&before) {
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if commit && take_one(&after) {
            severed.store(true, Ordering::SeqCst);
            let _ = up_tx.write_all(chunk).await;
            // Let PostgreSQL commit before the connection goes.
            tokio::time::sleep(Duration::from_millis(300)).await;
            cuts.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if up_tx.write_all(chunk).await.is_err() {
            break;
        }
    }
    replies.abort();
}
