//! TLS ClientHello sniffing for SNI routing: reads the first handshake message off a connection
//! without decrypting anything (the bytes are kept and replayed to the backend or to rustls),
//! extracts the server name, and picks a TLS route by it (exact name, then the longest matching
//! wildcard suffix, then `*`).

use crate::l4::L4Backends;
use sluice_ir::TlsMode;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest ClientHello Sluice buffers (bytes); larger ones are not TLS that a proxy must accept.
const MAX_HELLO: usize = 64 * 1024;

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    /// The client closed or the socket failed.
    #[error("connection closed before a ClientHello: {0}")]
    Io(#[from] std::io::Error),
    /// Not a TLS handshake, or a malformed one.
    #[error("not a TLS ClientHello: {0}")]
    Malformed(&'static str),
}

/// The raw bytes of the records that carried the ClientHello, and its server name.
#[derive(Debug)]
pub(crate) struct Hello {
    /// Everything read from the client so far (to replay).
    pub(crate) bytes: Vec<u8>,
    /// The SNI host name, lower-cased, when the client sent one.
    pub(crate) sni: Option<String>,
}

/// Reads TLS records from `io` until the first handshake message (the ClientHello) is complete.
pub(crate) async fn read_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<Hello, HelloError> {
    let mut bytes = Vec::with_capacity(2048);
    // Handshake payload reassembled across records.
    let mut hs = Vec::with_capacity(2048);
    let mut pos = 0usize;
    loop {
        // A record header.
        while bytes.len() < pos + 5 {
            read_more(io, &mut bytes).await?;
        }
        let h = &bytes[pos..pos + 5];
        if h[0] != 22 {
            return Err(HelloError::Malformed("first record is not a handshake"));
        }
        if h[1] != 3 {
            return Err(HelloError::Malformed("unknown record version"));
        }
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        if len == 0 || len > 16384 + 2048 {
            return Err(HelloError::Malformed("bad record length"));
        }
        while bytes.len() < pos + 5 + len {
            read_more(io, &mut bytes).await?;
        }
        hs.extend_from_slice(&bytes[pos + 5..pos + 5 + len]);
        pos += 5 + len;
        if hs.len() >= 4 {
            if hs[0] != 1 {
                return Err(HelloError::Malformed(
                    "first handshake message is not a ClientHello",
                ));
            }
            let mlen = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
            if mlen + 4 > MAX_HELLO {
                return Err(HelloError::Malformed("ClientHello too large"));
            }
            if hs.len() >= mlen + 4 {
                let sni = parse_sni(&hs[4..4 + mlen])?;
                return Ok(Hello { bytes, sni });
            }
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> Result<(), HelloError> {
    if buf.len() >= MAX_HELLO + 5 * 8 {
        return Err(HelloError::Malformed("ClientHello too large"));
    }
    buf.reserve(2048);
    let n = io.read_buf(buf).await?;
    if n == 0 {
        return Err(HelloError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HelloError> {
        if self.0.len() < n {
            return Err(HelloError::Malformed("truncated ClientHello"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<usize, HelloError> {
        Ok(self.take(1)?[0] as usize)
    }
    fn u16(&mut self) -> Result<usize, HelloError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// The `server_name` extension's host name of a ClientHello body (after the 4-byte header).
fn parse_sni(body: &[u8]) -> Result<Option<String>, HelloError> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    if r.0.is_empty() {
        return Ok(None); // no extensions
    }
    let n = r.u16()?;
    let mut ext = Reader(r.take(n)?);
    while !ext.0.is_empty() {
        let ty = ext.u16()?;
        let len = ext.u16()?;
        let data = ext.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut d = Reader(data);
        let list = d.u16()?;
        let mut names = Reader(d.take(list)?);
        while !names.0.is_empty() {
            let kind = names.u8()?;
            let len = names.u16()?;
            let name = names.take(len)?;
            if kind == 0 {
                let s = std::str::from_utf8(name)
                    .map_err(|_| HelloError::Malformed("server name is not UTF-8"))?;
                return Ok(Some(s.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Ok(None);
    }
    Ok(None)
}

/// One compiled TLS route.
#[derive(Debug)]
pub(crate) struct SniRoute {
    /// Route id as text, for logs.
    pub(crate) name: Arc<str>,
    pub(crate) mode: TlsMode,
    pub(crate) backends: L4Backends,
}

/// TLS routes of a listener indexed by SNI pattern.
#[derive(Debug, Default)]
pub(crate) struct SniRouter {
    exact: HashMap<String, Arc<SniRoute>>,
    /// (`.suffix`, route), longest suffix first, IR order among equals.
    wildcard: Vec<(String, Arc<SniRoute>)>,
    any: Option<Arc<SniRoute>>,
}

impl SniRouter {
    /// Adds a route's hostnames; earlier routes win for the same pattern.
    pub(crate) fn add(&mut self, hostnames: &[String], route: Arc<SniRoute>) {
        for h in hostnames {
            let h = h.to_ascii_lowercase();
            if h == "*" {
                self.any.get_or_insert_with(|| route.clone());
            } else if let Some(suffix) = h.strip_prefix('*') {
                if !self.wildcard.iter().any(|(s, _)| s == suffix) {
                    self.wildcard.push((suffix.to_string(), route.clone()));
                }
            } else {
                self.exact.entry(h).or_insert_with(|| route.clone());
            }
        }
    }

    /// Sorts wildcards, longest suffix first (stable: IR order among equals).
    pub(crate) fn finish(&mut self) {
        self.wildcard
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    }

    /// True when no route is indexed.
    pub(crate) fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty() && self.any.is_none()
    }

    /// The route for a server name: exact, then longest wildcard suffix, then `*`. A client
    /// without SNI only matches `*`.
    pub(crate) fn find(&self, sni: Option<&str>) -> Option<&Arc<SniRoute>> {
        if let Some(name) = sni {
            if let Some(r) = self.exact.get(name) {
                return Some(r);
            }
            for (suffix, r) in &self.wildcard {
                if name.len() > suffix.len() && name.ends_with(suffix.as_str()) {
                    return Some(r);
                }
            }
        }
        self.any.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as rustls writes it, split into records of `chunk` bytes.
    fn rustls_hello(sni: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let mut c = rustls::ClientConnection::new(
            Arc::new(cfg),
            rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        c.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn parses_sni_from_whole_and_fragmented_hellos() {
        let hello = rustls_hello("Db.Example.com");
        let h = read_client_hello(&mut &hello[..]).await.unwrap();
        assert_eq!(h.sni.as_deref(), Some("db.example.com"));
        assert_eq!(h.bytes, hello);

        // The same handshake message re-framed into 100-byte records.
        let body = &hello[5..];
        let mut frag = Vec::new();
        for c in body.chunks(100) {
            frag.extend_from_slice(&[22, 3, 1]);
            frag.extend_from_slice(&(c.len() as u16).to_be_bytes());
            frag.extend_from_slice(c);
        }
        frag.extend_from_slice(b"trailing application bytes");
        let h = read_client_hello(&mut &frag[..]).await.unwrap();
        assert_eq!(h.sni.as_deref(), Some("db.example.com"));

        // Byte-at-a-time delivery.
        let (mut a, mut b) = tokio::io::duplex(1);
        let hello2 = hello.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = a.write_all(&hello2).await;
        });
        let h = read_client_hello(&mut b).await.unwrap();
        assert_eq!(h.sni.as_deref(), Some("db.example.com"));
    }

    #[tokio::test]
    async fn rejects_non_tls_and_truncated_input() {
        let e = read_client_hello(&mut &b"GET / HTTP/1.1\r\n\r\n"[..]).await;
        assert!(matches!(e, Err(HelloError::Malformed(_))), "{e:?}");
        let hello = rustls_hello("a.example");
        let e = read_client_hello(&mut &hello[..hello.len() - 10]).await;
        assert!(matches!(e, Err(HelloError::Io(_))), "{e:?}");
        // A hello whose extensions lie about their length.
        let mut bad = hello.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        let mut body = vec![1u8, 0, 0, 40];
        body.extend_from_slice(&[3, 3]);
        body.extend_from_slice(&[0; 32]);
        body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0, 0, 50]);
        let mut rec = vec![22, 3, 1, 0, body.len() as u8];
        rec.extend_from_slice(&body);
        let e = read_client_hello(&mut &rec[..]).await;
        assert!(matches!(e, Err(HelloError::Malformed(_))), "{e:?}");
    }

    #[test]
    fn route_precedence() {
        let r = |n: &str| {
            Arc::new(SniRoute {
                name: n.into(),
                mode: TlsMode::Passthrough,
                backends: L4Backends::default(),
            })
        };
        let mut s = SniRouter::default();
        s.add(&["*".into()], r("any"));
        s.add(&["*.example.com".into()], r("short"));
        s.add(
            &["*.db.example.com".into(), "db.example.com".into()],
            r("long"),
        );
        s.add(&["x.db.example.com".into()], r("exact"));
        s.finish();
        let f = |n: Option<&str>| s.find(n).map(|r| r.name.to_string());
        assert_eq!(f(Some("x.db.example.com")).as_deref(), Some("exact"));
        assert_eq!(f(Some("y.db.example.com")).as_deref(), Some("long"));
        assert_eq!(f(Some("db.example.com")).as_deref(), Some("long"));
        assert_eq!(f(Some("a.b.example.com")).as_deref(), Some("short"));
        assert_eq!(f(Some("example.com")).as_deref(), Some("any"));
        assert_eq!(f(None).as_deref(), Some("any"));
        let mut s = SniRouter::default();
        s.add(&["*.example.com".into()], r("w"));
        s.finish();
        assert!(s.find(Some("example.com")).is_none());
        assert!(s.find(None).is_none());
    }
}
