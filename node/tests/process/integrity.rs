//! Damaged storage at rest: a node whose state database had a page overwritten while it was
//! stopped never serves from it, instead of serving reads from it and failing at its first
//! write (issue 19's report). By default it holds (no client or Raft listener; `/healthz`
//! alive, `/readyz` failing, the damage in `GET /raft/status` and `qpq_storage_damaged`);
//! with `--on-damage exit` it exits with a failure naming the file and the damage. The same
//! files undamaged start fine.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use qpq_schemas::ClientMsgId;

use qpq_node::admin::access::Role;
use qpq_node::admin::client::AdminClient;
use qpq_node::raft::certs::admin_credentials;

use crate::disk_full::private_message;
use crate::harness::{NodeProcess, local};

/// Runs a node on `data` until it exits by itself (at most `within`); its exit success and
/// its log.
fn run_to_exit(data: &std::path::Path, within: Duration) -> (bool, String) {
    let mut child = NodeProcess::command(data, &[("QPQ_ON_DAMAGE", "exit")])
        .spawn()
        .unwrap();
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

    // The default: it holds, and says so where a supervisor and an operator look.
    held_node_answers_only_what_lets_it_be_rebuilt(&data).await;

    // The sound copy back: the node serves again, with what it had.
    std::fs::copy(&backup, &db).unwrap();
    let node = NodeProcess::start(&data, &[]);
    assert!(
        node.log_text().contains("integrity check passed"),
        "{}",
        node.log_text()
    );
}

/// One plain HTTP/1.1 GET on the metrics listener: status line and body.
async fn probe(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// Starts a node with the default `--on-damage hold` on the damaged `data` and checks what
/// it answers, then stops it.
async fn held_node_answers_only_what_lets_it_be_rebuilt(data: &std::path::Path) {
    let mut child = NodeProcess::command(data, &[]).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("holding on damaged storage") {
                let _ = tx.send(line.clone());
            }
            lines.push(line);
        }
        lines.join("\n")
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!(
            "the node did not report holding: {}",
            reader.join().unwrap()
        );
    };
    let after = |marker: &str| {
        line.split(marker)
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_owned()
    };
    let (metrics, admin) = (after("metrics http://"), after("admin https://"));

    let (status, body) = probe(&metrics, "/healthz").await;
    assert!(
        status.contains(" 200 "),
        "alive while holding: {status} {body}"
    );
    assert!(body.contains("node.sqlite3"), "{body}");
    let (status, _) = probe(&metrics, "/readyz").await;
    assert!(status.contains(" 503 "), "never ready: {status}");
    let (_, text) = probe(&metrics, "/metrics").await;
    assert!(
        text.lines()
            .any(|l| l == "qpq_storage_damaged{file=\"node.sqlite3\"} 1"),
        "{text}"
    );

    let creds = data.join("cluster");
    let call = |role: Role, method: &'static str, path: &'static str| {
        let client = AdminClient::load(&admin_credentials(&creds, role)).unwrap();
        let admin = admin.clone();
        async move {
            let (code, body) = client
                .call(&admin, method, path, "", Duration::from_secs(5))
                .await
                .unwrap();
            (
                code,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default(),
            )
        }
    };
    let (code, s) = call(Role::ReadOnly, "GET", "/raft/status").await;
    assert_eq!(code, 200, "{s}");
    assert_eq!(s["role"], "damaged", "{s}");
    assert_eq!(s["damaged"]["file"], "node.sqlite3", "{s}");
    assert!(
        s["membership"]["voters"].as_object().unwrap().is_empty(),
        "{s}"
    );
    // A backup would copy the damaged file: refused; roles are checked as on a serving node.
    let (code, v) = call(Role::Backup, "POST", "/backup").await;
    assert_eq!(
        (code, v["error"].as_str()),
        (503, Some("storage_damaged")),
        "{v}"
    );
    let (code, _) = call(Role::ReadOnly, "POST", "/raft/rebuild").await;
    assert_eq!(code, 403, "read-only may not rebuild");
    let (code, v) = call(Role::Operator, "POST", "/raft/rebuild").await;
    assert_eq!(code, 400, "no body: {v}");

    // A signal stops it with a failure: it never served.
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the held node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = reader.join().unwrap();
    assert!(!exit.success(), "{log}");
    assert!(!log.contains("node serving"), "it never served: {log}");
    assert!(log.contains("failed its integrity check"), "{log}");
}
