//! A fault-injecting HTTP proxy between `backup` and a test server, on
//! 127.0.0.1: it fails a share of requests with a 500 or a reset connection,
//! or cuts a response part-way, so the retry layer meets a bad network for real.
//!
//! It parses only the request head. Each request gets `Connection: close`, so
//! every connection carries exactly one request and a response ends when the
//! server closes: no response parsing, and a fault hits one request, not a
//! keep-alive connection's worth. Bounded: a seeded generator decides, and the
//! proxy stops when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What share of requests (0.0 to 1.0) meets each fault; the rest pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answered with `500 Internal Server Error` without reaching the server.
    pub error_500: f64,
    /// The connection is reset (RST) after the request head.
    pub reset: f64,
    /// Forwarded, but the response is cut after a few KiB with a reset.
    pub cut_response: f64,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
}

pub struct FaultProxy {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    faults: Arc<Mutex<Faults>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy to the server at `upstream` (an `http://host:port[/...]` URL).
    pub fn start(upstream: &str, faults: Faults, seed: u64) -> FaultProxy {
        let upstream_addr = upstream_addr(upstream);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Mutex::new(faults));
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let (c, f) = (counts.clone(), shared.clone());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (c, f, rng) = (c.clone(), f.clone(), rng.clone());
                tokio::spawn(async move {
                    let _ = serve(client, upstream_addr, c, f, rng).await;
                });
            }
        });
        FaultProxy {
            addr,
            counts,
            faults: shared,
            runtime: Some(runtime),
        }
    }

    /// The proxy's URL with the upstream URL's path kept (Azurite's account).
    pub fn url_for(&self, upstream: &str) -> String {
        let rest = upstream.trim_start_matches("http://");
        let path = rest.find('/').map_or("", |i| &rest[i..]);
        format!("http://{}{path}", self.addr)
    }

    pub fn set(&self, faults: Faults) {
        *self.faults.lock().unwrap() = faults;
    }

    pub fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::SeqCst)
    }

    pub fn failed(&self) -> u64 {
        self.counts.failed.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn upstream_addr(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("http://")
        .expect("the proxy speaks plain http to test servers");
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse().expect("upstream as 127.0.0.1:PORT")
}

enum Fate {
    Pass,
    Error500,
    Reset,
    Cut,
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    counts: Arc<Counts>,
    faults: Arc<Mutex<Faults>>,
    rng: Arc<Mutex<fastrand::Rng>>,
) -> std::io::Result<()> {
    let head = match read_head(&mut client).await? {
        Some(head) => head,
        None => return Ok(()), // closed without a request
    };
    counts.requests.fetch_add(1, Ordering::SeqCst);
    let fate = {
        let f = *faults.lock().unwrap();
        let roll = rng.lock().unwrap().f64();
        if roll < f.error_500 {
            Fate::Error500
        } else if roll < f.error_500 + f.reset {
            Fate::Reset
        } else if roll < f.error_500 + f.reset + f.cut_response {
            Fate::Cut
        } else {
            Fate::Pass
        }
    };
    if !matches!(fate, Fate::Pass) {
        counts.failed.fetch_add(1, Ordering::SeqCst);
    }
    match fate {
        Fate::Error500 => {
            let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                        <Message>injected by the test proxy</Message></Error>";
            let response = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            client.write_all(response.as_bytes()).await?;
            client.shutdown().await?;
            // Let the client finish sending so it reads the answer, not a reset.
            let mut sink = [0u8; 64 * 1024];
            let drain = async { while client.read(&mut sink).await.unwrap_or(0) > 0 {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drain).await;
            Ok(())
        }
        Fate::Reset => {
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
        Fate::Pass | Fate::Cut => {
            let mut server = TcpStream::connect(upstream).await?;
            server.write_all(&close_after(&head)).await?;
            if matches!(fate, Fate::Pass) {
                tokio::io::copy_bidirectional(&mut client, &mut server).await?;
                return Ok(());
            }
            // Relay the rest of the request, then only the start of the answer.
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let upload = tokio::io::copy(&mut client_read, &mut server_write);
            let download = async {
                let mut buf = vec![0u8; 4096];
                let n = server_read.read(&mut buf).await?;
                client_write.write_all(&buf[..n]).await
            };
            tokio::select! {
                _ = upload => {}
                r = download => { r?; }
            }
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
    }
}

/// Reads up to the end of the request head; the body stays in the socket.
async fn read_head(client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 {
            return Ok(None);
        }
        head.push(byte[0]);
        if head.len() > 64 * 1024 {
            return Err(std::io::Error::other("request head too long"));
        }
    }
    Ok(Some(head))
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn close_after(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len() + 20);
    for line in text.trim_end_matches("\r\n").split("\r\n") {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}
