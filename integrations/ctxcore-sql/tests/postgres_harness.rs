//! The throwaway PostgreSQL harness itself: it starts, gives databases, and
//! really stops on drop.
mod support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::pg::PgCluster;

#[test]
fn starts_creates_databases_and_stops_on_drop() {
    let t = Instant::now();
    let pg = PgCluster::start();
    let started = t.elapsed();
    let t = Instant::now();
    let a = pg.create_database("harness");
    let b = pg.create_database("harness");
    eprintln!("cluster start {started:?}, CREATE DATABASE {:?} each", t.elapsed() / 2);
    assert_ne!(a, b);
    assert_eq!(pg.psql(&a, "SELECT current_database()").unwrap().trim(), a);
    assert_eq!(pg.psql(&b, "SELECT current_database()").unwrap().trim(), b);
    assert!(pg.psql(&a, "SELEC 1").is_err(), "psql errors are reported");
    let port = pg.port();
    let dir = pg.dir().to_path_buf();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(pg);
    assert!(!dir.exists(), "the directory is removed");
    assert!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err(),
        "the server is stopped"
    );
}

#[test]
fn shared_cluster_is_one_per_binary() {
    let a = PgCluster::shared();
    let b = PgCluster::shared();
    assert_eq!(a.port(), b.port());
    let db = a.create_database("shared");
    assert_eq!(a.psql(&db, "SELECT 40 + 2").unwrap().trim(), "42");
}

/// Run by `an_owned_cluster_is_removed_when_its_process_is_killed` in a child
/// process: starts an owned cluster, says where, and waits to be killed.
#[test]
#[ignore = "run as a child process by another test"]
fn child_holds_an_owned_cluster() {
    if std::env::var_os("CTXCORE_PG_CHILD").is_none() {
        return;
    }
    let pg = PgCluster::start();
    println!("CLUSTER {} {}", pg.port(), pg.dir().display());
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn an_owned_cluster_is_removed_when_its_process_is_killed() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_holds_an_owned_cluster", "--ignored", "--nocapture"])
        .env("CTXCORE_PG_CHILD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (port, dir) = loop {
        let line = lines
            .next()
            .expect("the child exited before starting its cluster")
            .unwrap();
        if let Some(rest) = line.strip_prefix("CLUSTER ") {
            let (port, dir) = rest.split_once(' ').unwrap();
            break (port.parse::<u16>().unwrap(), std::path::PathBuf::from(dir));
        }
    };
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    child.kill().unwrap(); // SIGKILL: no Drop runs
    child.wait().unwrap();
    let t = Instant::now();
    while dir.exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "{} still there", dir.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).is_err(),
        "the server is stopped"
    );
}
