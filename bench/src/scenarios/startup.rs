//! S1: from spawning `atelier serve` on an empty SQLite data dir to `/readyz` answering 200
//! (process start, migrations, binding, first readiness probe), median of several starts.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    client::Api,
    error::{Context, Result},
    report::{Backend, Row, ms},
    server::{Server, Store, Workspace},
};

const LIMIT: Duration = Duration::from_millis(200);
const READY_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn s1(ws: &Workspace, scratch: &Path, starts: usize) -> Result<Vec<Row>> {
    let mut times = Vec::with_capacity(starts);
    for _ in 0..starts {
        let dir = tempfile::Builder::new()
            .prefix("s1-")
            .tempdir_in(scratch)
            .context("creating S1's data dir")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).context("creating S1's data dir")?;
        let store = Store {
            data_dir,
            database_url: None,
            serve_env: Vec::new(),
        };
        let began = Instant::now();
        let server = Server::start(ws, &store, &dir.path().join("server.log")).await?;
        let api = Api::new(server.base())?;
        server.wait_ready(&api, READY_TIMEOUT).await?;
        times.push(began.elapsed());
        server.stop().await?;
    }
    times.sort_unstable();
    let median = *times.get(times.len() / 2).context("S1 made no starts")?;

    let mut row = Row::new(
        Backend::Sqlite,
        "S1",
        format!("serve → /readyz 200, empty data dir, median of {starts}"),
    );
    row.value = ms(median);
    row.p50 = Some(median);
    row.p99 = times.last().copied();
    row.target = format!("≤ {}", ms(LIMIT));
    row.met = median <= LIMIT;
    row.notes.push(format!(
        "starts: {}",
        times.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")
    ));
    Ok(vec![row])
}
