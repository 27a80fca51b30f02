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
