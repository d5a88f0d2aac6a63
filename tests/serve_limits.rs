//! `opslet serve` under connections that never finish a request: thousands of idle ones and
//! hundreds that send their headers a byte at a time do not stop a normal request from being
//! answered, the server raises its open-files limit itself, closes connections that send no
//! complete headers in time, and past its connection limit answers 503 and says so once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Raises this test process's own open-files limit: it holds thousands of connections too.
fn enough_files() {
    // SAFETY: getrlimit/setrlimit on a plain struct.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        assert!(lim.rlim_max >= 4096, "this test needs a hard open-files limit of 4096 or more, not {}", lim.rlim_max);
    }
}

/// `opslet serve` started the way many systems start processes: a soft open-files limit of
/// 1024 under a higher hard limit. Returns the child, its address and its stderr lines.
fn serve(data: &std::path::Path, extra: &[&str]) -> (Child, String, std::sync::mpsc::Receiver<String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_opslet"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"]).args(extra).env("OPSLET_DATA_DIR", data).env_remove("OPSLET_CONFIG");
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let mut lim: libc::rlimit = std::mem::zeroed();
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
            lim.rlim_cur = 1024;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = loop {
        let line = lines.next().expect("the server printed its address").unwrap();
        if let Some(a) = line.strip_prefix("listening on ") {
            break a.to_string();
        }
        let _ = tx.send(line);
    };
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (child, addr, rx)
}

/// `GET /healthz` on a new connection; the answer's status line, within `within`.
fn healthz(addr: &str, within: Duration) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(within)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).map_err(|e| format!("read: {e} (got {answer:?})"))?;
    Ok(answer.lines().next().unwrap_or_default().to_string())
}

#[test]
fn idle_and_trickling_connections_do_not_stop_a_request() {
    enough_files();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr, log) = serve(&dir.path().join("data"), &["--header-timeout", "3s"]);
    // 2,000 connections that send nothing.
    let idle: Vec<TcpStream> = (0..2000).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    // 200 that send a request's headers a byte at a time.
    let trickling: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeder = {
        let mut conns: Vec<TcpStream> = trickling.iter().map(|c| c.try_clone().unwrap()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < request.len() {
                for c in &mut conns {
                    let _ = c.write_all(&request[i..i + 1]);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // A normal request is answered meanwhile (the bound is generous; it would otherwise hang).
    for _ in 0..5 {
        assert_eq!(healthz(&addr, Duration::from_secs(5)).unwrap(), "HTTP/1.1 200 OK");
    }
    // Connections that sent no complete headers in time are closed by the server.
    let mut first = idle[0].try_clone().unwrap();
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the idle connection was closed, not answered: {:?}", String::from_utf8_lossy(&buf[..n]));
    assert!(started.elapsed() < Duration::from_secs(9));
    let mut slow = trickling[0].try_clone().unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "a trickled request was not served: {}",
        String::from_utf8_lossy(&answer)
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    feeder.join().unwrap();
    // It raised its own open-files limit from the 1024 it was started with.
    let said: Vec<String> = log.try_iter().collect();
    assert!(said.iter().any(|l| l.contains("open-files limit raised")), "{said:?}");
    drop((idle, trickling));
    assert_eq!(healthz(&addr, Duration::from_secs(5)).unwrap(), "HTTP/1.1 200 OK");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn past_the_connection_limit_new_connections_get_503_and_one_log_line() {
    enough_files();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr, log) = serve(&dir.path().join("data"), &["--max-connections", "100"]);
    let held: Vec<TcpStream> = (0..100).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        let status = healthz(&addr, Duration::from_secs(5)).unwrap();
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    }
    let said: Vec<String> = log.try_iter().collect();
    assert_eq!(said.iter().filter(|l| l.contains("connection limit reached")).count(), 1, "{said:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(healthz(&addr, Duration::from_secs(5)).unwrap(), "HTTP/1.1 200 OK");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn a_body_sent_slowly_is_cut_off() {
    enough_files();
    let dir = tempfile::tempdir().unwrap();
    let (mut server, addr, _log) = serve(&dir.path().join("data"), &["--header-timeout", "1s"]);
    // The headers arrive at once; the body, unsigned and to a webhook that needs no token,
    // never does: the connection is answered 408 after three header timeouts.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /hooks/anything HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"a\":").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 3s"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(15));
    server.kill().unwrap();
    server.wait().unwrap();
}
