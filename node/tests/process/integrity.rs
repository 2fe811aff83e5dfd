//! Damaged storage at rest: a node whose state database had a page overwritten while it was
//! stopped refuses to start, naming the file and the damage, instead of serving reads from
//! it and failing at its first write (issue 19's report). The same files undamaged start
//! fine, and `--integrity-check off` is the way to skip the check deliberately.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use qpq_schemas::ClientMsgId;

use crate::disk_full::private_message;
use crate::harness::{NodeProcess, local};

/// Runs a node on `data` until it exits by itself (at most `within`); its exit success and
/// its log.
fn run_to_exit(data: &std::path::Path, within: Duration) -> (bool, String) {
    let mut child = NodeProcess::command(data, &[]).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the node did not exit within {within:?}: {}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.success(), reader.join().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_serve_from_a_damaged_state_database() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut node = NodeProcess::start(&data, &[]);
    local(async {
        let (c, _, _) = node.user().await;
        let ch = c.create_channel().await.unwrap();
        for _ in 0..100 {
            c.enqueue(&ch, &ClientMsgId::random(), &private_message(2048))
                .await
                .unwrap();
        }
    })
    .await;
    node.sigterm();
    assert!(node.wait_exit(Duration::from_secs(30)), "clean shutdown");
    drop(node);

    // Everything in the main file, then one b-tree page header in the middle overwritten.
    let db = data.join("node.sqlite3");
    let page_size: u64 = {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        u64::try_from(size).unwrap()
    };
    let pages = std::fs::metadata(&db).unwrap().len() / page_size;
    assert!(pages > 20, "{pages} pages");
    let backup = dir.path().join("node.sqlite3.sound");
    std::fs::copy(&db, &backup).unwrap();
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(SeekFrom::Start((pages / 2) * page_size)).unwrap();
        f.write_all(&[0xA5; 12]).unwrap();
        f.sync_all().unwrap();
    }

    let (ok, log) = run_to_exit(&data, Duration::from_secs(30));
    assert!(
        !ok,
        "the node exited successfully from a damaged database: {log}"
    );
    assert!(
        log.contains("failed its integrity check") && log.contains("node.sqlite3"),
        "the error names the check and the file: {log}"
    );
    assert!(
        !log.contains("node serving"),
        "it never served from the damaged file: {log}"
    );

    // The sound copy back: the node serves again, with what it had.
    std::fs::copy(&backup, &db).unwrap();
    let node = NodeProcess::start(&data, &[]);
    assert!(
        node.log_text().contains("integrity check passed"),
        "{}",
        node.log_text()
    );
}
