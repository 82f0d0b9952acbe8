//! A minimal blocking HTTP/1.1 client for probes (is a route serving yet?) and for holding many
//! idle keep-alive connections open.

use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `GET path` with `Host: host` on `s` and reads one response; returns its status code.
pub fn get_on(s: &mut TcpStream, host: &str, path: &str, close: bool) -> Result<u16> {
    let conn = if close { "close" } else { "keep-alive" };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
            let status = parse_status(head)?;
            let len = content_length(head);
            let body_have = buf.len() - (end + 4);
            match len {
                Some(n) if body_have >= n => return Ok(status),
                None if close => {
                    // Read to the end.
                    while s.read(&mut chunk)? > 0 {}
                    return Ok(status);
                }
                None => bail!("response without Content-Length on a keep-alive connection"),
                _ => {}
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            bail!("connection closed before a full response");
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a new connection (`Connection: close`); the status code.
pub fn probe(addr: SocketAddr, host: &str, path: &str) -> Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_nodelay(true)?;
    get_on(&mut s, host, path, true)
}

/// The body of a response (new connection), for checking what a server serves.
pub fn fetch_body(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let end = find(&buf, b"\r\n\r\n").context("no response head")?;
    let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
    Ok((parse_status(head)?, buf[end + 4..].to_vec()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_status(head: &str) -> Result<u16> {
    let line = head.lines().next().unwrap_or_default();
    let mut it = line.split_whitespace();
    match (it.next(), it.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse()
            .with_context(|| format!("bad status line {line:?}")),
        _ => bail!("bad status line {line:?}"),
    }
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn heads() {
        let h = "HTTP/1.1 404 Not Found\r\nServer: x\r\ncontent-length: 12";
        assert_eq!(parse_status(h).unwrap(), 404);
        assert_eq!(content_length(h), Some(12));
        assert!(parse_status("SSH-2.0-OpenSSH").is_err());
    }

    /// A server that answers two requests on one connection, the body split over two writes.
    #[test]
    fn keep_alive_requests_against_a_real_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 1024];
            for code in [200, 503] {
                let _ = s.read(&mut buf).unwrap();
                s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 5\r\n\r\nab").as_bytes())
                    .unwrap();
                std::thread::sleep(Duration::from_millis(20));
                s.write_all(b"cde").unwrap();
            }
        });
        let mut s = TcpStream::connect(addr).unwrap();
        assert_eq!(get_on(&mut s, "a", "/", false).unwrap(), 200);
        assert_eq!(get_on(&mut s, "a", "/", false).unwrap(), 503);
        t.join().unwrap();
        assert!(probe(addr, "a", "/").is_err(), "nobody listens any more");
    }
}
