//! A fault-injecting HTTP proxy between `backup` and a test server, on
//! 127.0.0.1: it fails a share of requests with a 500, 503 or 429, a reset connection,
//! or cuts a response part-way, so the retry layer meets a bad network for real.
//!
//! It parses only the request head. Each request gets `Connection: close`, so
//! every connection carries exactly one request and a response ends when the
//! server closes: no response parsing, and a fault hits one request, not a
//! keep-alive connection's worth. Bounded: a seeded generator decides, and the
//! proxy stops when dropped.
//!
//! It also records each request line and the most requests it had open at
//! once, so a test can see what a backend sent (one PUT, or a multipart
//! upload with at most N parts in flight).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What share of requests (0.0 to 1.0) meets each fault; the rest pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Answered without reaching the server with an error that says "try again":
    /// in turn `500 InternalError`, `503 SlowDown` (S3's throttling) and
    /// `429 TooManyRequests`.
    pub error_500: f64,
    /// The connection is reset (RST) after the request head.
    pub reset: f64,
    /// Forwarded, but the response is cut after a few KiB with a reset.
    pub cut_response: f64,
    /// Every request waits this long before it is answered or forwarded: a slow
    /// network, so a test can act while an upload is under way.
    pub delay: std::time::Duration,
}

#[derive(Debug, Default)]
pub struct Counts {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    /// Requests being served right now, and the most there ever were.
    open: AtomicU64,
    pub most_open: AtomicU64,
    /// Request lines (`PUT /bucket/key?partNumber=2&uploadId=… HTTP/1.1`), in arrival order.
    pub lines: Mutex<Vec<String>>,
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

    /// The request lines seen so far, without the trailing ` HTTP/1.1`.
    pub fn request_lines(&self) -> Vec<String> {
        self.counts.lines.lock().unwrap().clone()
    }

    /// The most requests that were open at the same time.
    pub fn most_open(&self) -> u64 {
        self.counts.most_open.load(Ordering::SeqCst)
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.counts.lines.lock().unwrap().clear();
        self.counts.most_open.store(0, Ordering::SeqCst);
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
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or_default();
    counts
        .lines
        .lock()
        .unwrap()
        .push(line.trim_end_matches(" HTTP/1.1").to_owned());
    let mut open = Open::new(&counts);
    let delay = faults.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
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
            const ANSWERS: [(&str, &str); 3] = [
                ("500 Internal Server Error", "InternalError"),
                ("503 Slow Down", "SlowDown"),
                ("429 Too Many Requests", "TooManyRequests"),
            ];
            let n = counts.failed.load(Ordering::SeqCst) as usize;
            let (status, code) = ANSWERS[n % ANSWERS.len()];
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                 <Message>injected by the test proxy</Message></Error>"
            );
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n\
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
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let upload = async {
                tokio::io::copy(&mut client_read, &mut server_write).await?;
                server_write.shutdown().await
            };
            // The first bytes of the answer end the request's time as open,
            // before the client can see them and start another request.
            let cut = matches!(fate, Fate::Cut);
            let download = async {
                let mut first = vec![0u8; 4096];
                let n = server_read.read(&mut first).await?;
                open.answered();
                client_write.write_all(&first[..n]).await?;
                if !cut {
                    tokio::io::copy(&mut server_read, &mut client_write).await?;
                    client_write.shutdown().await?;
                }
                Ok::<(), std::io::Error>(())
            };
            if cut {
                // Relay the rest of the request, then only the start of the answer.
                tokio::select! {
                    _ = upload => {}
                    r = download => { r?; }
                }
                client.set_zero_linger()?;
                drop(client);
                return Ok(());
            }
            let (up, down) = tokio::join!(upload, download);
            up.and(down)
        }
    }
}

/// A request counted as open from its head until its answer starts (or it
/// ends without one).
struct Open<'a> {
    counts: &'a Counts,
    answered: bool,
}

impl<'a> Open<'a> {
    fn new(counts: &'a Counts) -> Self {
        let now = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
        counts.most_open.fetch_max(now, Ordering::SeqCst);
        Open {
            counts,
            answered: false,
        }
    }

    fn answered(&mut self) {
        if !std::mem::replace(&mut self.answered, true) {
            self.counts.open.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.answered();
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
