//! A pipe between two threads of this process: what one writes, the other
//! reads, through a queue of owned chunks. Where both ends are ours, a kernel
//! pipe costs two copies and a system call each way per 64 KiB.

use std::io::{Read, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::QUEUE;

/// A pipe whose ends are [`ChunkWriter`] and [`ChunkReader`]; at most
/// [`QUEUE`] chunks wait in it.
pub fn pipe() -> (ChunkWriter, ChunkReader) {
    let (tx, rx) = sync_channel(QUEUE);
    (
        ChunkWriter { tx },
        ChunkReader {
            rx,
            chunk: Vec::new(),
            at: 0,
        },
    )
}

/// The writing end: a write fails with `BrokenPipe` once the reader is gone.
pub struct ChunkWriter {
    tx: SyncSender<Vec<u8>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.tx
            .send(buf.to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The reading end: the end of the stream once the writer is dropped.
pub struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.chunk = chunk;
                    self.at = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_is_read_in_order_then_the_end() {
        let (mut w, mut r) = pipe();
        let writer = std::thread::spawn(move || {
            for i in 0..100u32 {
                w.write_all(&vec![i as u8; (i as usize) * 37]).unwrap();
            }
        });
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        let want: Vec<u8> = (0..100u32)
            .flat_map(|i| vec![i as u8; (i as usize) * 37])
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_write_after_the_reader_is_gone_is_a_broken_pipe() {
        let (mut w, r) = pipe();
        drop(r);
        let e = w.write_all(b"x").unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    }
}
