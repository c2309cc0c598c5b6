//! Compression and decompression behind one interface per direction.

use std::io::{self, Read, Write};

use crate::model::Compression;

/// A push encoder: write raw bytes in, take compressed bytes out as they come.
pub enum Encoder {
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    None(Vec<u8>),
}

impl Encoder {
    pub fn new(compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::Zstd(level) => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), level)?;
                // A checksum per frame lets `zstd -t` check a copy without us.
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
            Compression::Gzip(level) => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Compression::None => Encoder::None(Vec::new()),
        })
    }

    /// The compressed bytes produced so far and not yet taken.
    pub fn take_output(&mut self) -> Vec<u8> {
        // The encoders only ever append to their output, so emptying it is safe.
        match self {
            Encoder::Zstd(e) => std::mem::take(e.get_mut()),
            Encoder::Gzip(e) => std::mem::take(e.get_mut()),
            Encoder::None(buf) => std::mem::take(buf),
        }
    }

    /// Ends the stream and returns the last compressed bytes.
    pub fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Zstd(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
            Encoder::None(buf) => Ok(buf),
        }
    }
}

impl Write for Encoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::None(out) => {
                out.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A pull decoder over a stored stream.
pub enum Decoder<R: Read> {
    Zstd(zstd::stream::read::Decoder<'static, io::BufReader<R>>),
    // Boxed: the gzip state is four times the size of the others.
    Gzip(Box<flate2::read::GzDecoder<R>>),
    None(R),
}

impl<R: Read> Decoder<R> {
    pub fn new(compression: Compression, source: R) -> io::Result<Self> {
        Ok(match compression {
            Compression::Zstd(_) => Decoder::Zstd(zstd::stream::read::Decoder::new(source)?),
            Compression::Gzip(_) => Decoder::Gzip(Box::new(flate2::read::GzDecoder::new(source))),
            Compression::None => Decoder::None(source),
        })
    }
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Gzip(d) => d.read(buf),
            Decoder::None(r) => r.read(buf),
        }
    }
}
