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
//!
//! Two modes stall requests without failing them, for the I/O timeout:
//! `freeze` stops every byte in both directions on every connection, open or
//! new, while keeping the connections open (a server under `kill -STOP`, a
//! partition), until `thaw`; `Faults::trickle` lets each direction move only
//! so many bytes per interval (a slow but alive server). The listening
//! socket's small receive buffer keeps the proxy's kernel from taking in
//! megabytes of an upload the proxy has not relayed, which would hide a
//! stall or a trickle's pace from the client; the client's own send buffer
//! (up to 4 MiB on Linux) is beyond its reach, so a smaller write still
//! returns at once and the stall shows when the client waits for more room
//! or for the answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

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
    /// Each direction of every connection moves at most this pace, read live
    /// so a test can slow a transfer under way. `None`: full speed.
    pub trickle: Option<Trickle>,
}

/// At most `bytes` per `every`, in bursts of at most `bytes`.
#[derive(Debug, Clone, Copy)]
pub struct Trickle {
    pub bytes: usize,
    pub every: Duration,
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
    frozen: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Small enough that the proxy, not the kernel, holds back a client's bytes.
const RECV_BUFFER: u32 = 64 * 1024;

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
            .block_on(async {
                let socket = TcpSocket::new_v4()?;
                // Accepted sockets inherit it.
                socket.set_recv_buffer_size(RECV_BUFFER)?;
                socket.bind(([127, 0, 0, 1], 0).into())?;
                socket.listen(1024)
            })
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let counts = Arc::new(Counts::default());
        let shared = Arc::new(Mutex::new(faults));
        let rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(seed)));
        let (frozen, gate) = watch::channel(false);
        let (c, f) = (counts.clone(), shared.clone());
        runtime.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (c, f, rng) = (c.clone(), f.clone(), rng.clone());
                let pipe = Pipe::new(Gate(gate.clone()), f.clone());
                tokio::spawn(async move {
                    let _ = serve(client, upstream_addr, &c, pipe, rng).await;
                });
            }
        });
        FaultProxy {
            addr,
            counts,
            faults: shared,
            frozen,
            runtime: Some(runtime),
        }
    }

    /// Stops every byte in both directions, on open and new connections alike,
    /// and keeps the connections open: a stalled server or network.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Lets everything a `freeze` held resume where it stopped.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
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
    counts: &Counts,
    mut pipe: Pipe,
    rng: Arc<Mutex<fastrand::Rng>>,
) -> std::io::Result<()> {
    let head = match read_head(&mut pipe, &mut client).await? {
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
    let mut open = Open::new(counts);
    let delay = pipe.faults().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let fate = {
        let f = pipe.faults();
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
            pipe.send(&mut client, response.as_bytes()).await?;
            pipe.shutdown(&mut client).await?;
            // Let the client finish sending so it reads the answer, not a reset.
            let drain =
                async { while pipe.read(&mut client, usize::MAX).await.unwrap_or(0) > 0 {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
            // A freeze that outlasts the drain must not see the connection close.
            pipe.gate.open().await;
            Ok(())
        }
        Fate::Reset => {
            pipe.gate.open().await;
            client.set_zero_linger()?;
            drop(client);
            Ok(())
        }
        Fate::Pass | Fate::Cut => {
            let mut server = TcpStream::connect(upstream).await?;
            pipe.send(&mut server, &close_after(&head)).await?;
            let (mut client_read, mut client_write) = client.split();
            let (mut server_read, mut server_write) = server.split();
            let mut up = pipe.clone();
            let upload = async {
                while up.relay(&mut client_read, &mut server_write).await? > 0 {}
                up.shutdown(&mut server_write).await
            };
            // The first bytes of the answer end the request's time as open,
            // before the client can see them and start another request.
            let cut = matches!(fate, Fate::Cut);
            let mut down = pipe.clone();
            let download = async {
                let n = down.read(&mut server_read, 4096).await?;
                open.answered();
                down.write(&mut client_write, n).await?;
                if !cut {
                    while down.relay(&mut server_read, &mut client_write).await? > 0 {}
                    down.shutdown(&mut client_write).await?;
                }
                Ok::<(), std::io::Error>(())
            };
            if cut {
                // Relay the rest of the request, then only the start of the answer.
                tokio::select! {
                    _ = upload => {}
                    r = download => { r?; }
                }
                pipe.gate.open().await;
                client.set_zero_linger()?;
                drop(client);
                return Ok(());
            }
            let (up, down) = tokio::join!(upload, download);
            up.and(down)
        }
    }
}

/// Whether bytes may move: closed while the proxy is frozen.
#[derive(Clone)]
struct Gate(watch::Receiver<bool>);

impl Gate {
    async fn open(&mut self) {
        // A dropped sender means a dropped proxy: nothing left to hold back.
        let _ = self.0.wait_for(|frozen| !frozen).await;
    }

    async fn closed(&mut self) {
        if self.0.wait_for(|frozen| *frozen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One direction's relay: every read and write waits for an open gate, and
/// one under way when the gate closes is dropped before it moves a byte (a
/// socket's read and write are cancel safe), so a freeze holds the bytes in
/// the kernel and the peer sees no progress, without a busy wait.
#[derive(Clone)]
struct Pipe {
    gate: Gate,
    faults: Arc<Mutex<Faults>>,
    buf: Vec<u8>,
}

impl Pipe {
    fn new(gate: Gate, faults: Arc<Mutex<Faults>>) -> Self {
        Pipe {
            gate,
            faults,
            buf: vec![0u8; 64 * 1024],
        }
    }

    fn faults(&self) -> Faults {
        *self.faults.lock().unwrap()
    }

    /// Reads at most `max` bytes, and at most a trickle's burst, into the buffer.
    async fn read<R: AsyncRead + Unpin>(
        &mut self,
        from: &mut R,
        max: usize,
    ) -> std::io::Result<usize> {
        let burst = self.faults().trickle.map_or(usize::MAX, |t| t.bytes.max(1));
        let len = self.buf.len().min(max).min(burst);
        loop {
            self.gate.open().await;
            tokio::select! {
                biased;
                _ = self.gate.closed() => continue,
                r = from.read(&mut self.buf[..len]) => return r,
            }
        }
    }

    /// Writes the first `n` bytes of the buffer.
    async fn write<W: AsyncWrite + Unpin>(&mut self, to: &mut W, n: usize) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.send(to, &buf[..n]).await;
        self.buf = buf;
        r
    }

    /// Moves one chunk; 0 at the end of the stream.
    async fn relay<R, W>(&mut self, from: &mut R, to: &mut W) -> std::io::Result<usize>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let n = self.read(from, usize::MAX).await?;
        self.write(to, n).await?;
        Ok(n)
    }

    /// Writes `data`, at a trickle's pace if there is one.
    async fn send<W: AsyncWrite + Unpin>(
        &mut self,
        to: &mut W,
        data: &[u8],
    ) -> std::io::Result<()> {
        let mut rest = data;
        while !rest.is_empty() {
            let trickle = self.faults().trickle;
            let burst = trickle
                .map_or(rest.len(), |t| t.bytes.max(1))
                .min(rest.len());
            let mut chunk = &rest[..burst];
            while !chunk.is_empty() {
                self.gate.open().await;
                let n = tokio::select! {
                    biased;
                    _ = self.gate.closed() => continue,
                    r = to.write(chunk) => r?,
                };
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                chunk = &chunk[n..];
            }
            rest = &rest[burst..];
            if let Some(t) = trickle {
                // In proportion, so that short reads do not slow the pace.
                let share = burst as f64 / t.bytes.max(1) as f64;
                tokio::time::sleep(t.every.mul_f64(share)).await;
            }
        }
        Ok(())
    }

    /// The end of the stream is news to the peer too, so a freeze holds it back.
    async fn shutdown<W: AsyncWrite + Unpin>(&mut self, to: &mut W) -> std::io::Result<()> {
        self.gate.open().await;
        to.shutdown().await
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
async fn read_head(pipe: &mut Pipe, client: &mut TcpStream) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        if pipe.read(client, 1).await? == 0 {
            return Ok(None);
        }
        head.push(pipe.buf[0]);
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
