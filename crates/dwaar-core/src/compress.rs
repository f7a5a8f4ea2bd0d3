//! Streaming content codings (gzip, deflate, br, zstd): decoders and encoders that take
//! a body chunk by chunk and give back what can be sent now, flushed so a streamed
//! response is never held back. Used where a response body is rewritten (`encode`, and
//! the analytics injector, which decodes, edits and re-encodes in the origin's coding).

use std::io::Write;

/// A content coding Dwaar can decode and encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Br,
    Zstd,
}

/// A `Content-Encoding` Dwaar cannot decode (or several codings stacked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownCoding;

impl Coding {
    /// The coding named by a `Content-Encoding` value: `Ok(None)` for none or
    /// `identity`, `Err` for one Dwaar does not know (or several stacked).
    pub fn from_content_encoding(v: Option<&str>) -> Result<Option<Coding>, UnknownCoding> {
        let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        if v.contains(',') {
            return Err(UnknownCoding);
        }
        match v.to_ascii_lowercase().as_str() {
            "identity" => Ok(None),
            "gzip" | "x-gzip" => Ok(Some(Coding::Gzip)),
            "deflate" => Ok(Some(Coding::Deflate)),
            "br" => Ok(Some(Coding::Br)),
            "zstd" => Ok(Some(Coding::Zstd)),
            _ => Err(UnknownCoding),
        }
    }
}

type Sink = Vec<u8>;

enum Dec {
    Gzip(flate2::write::GzDecoder<Sink>),
    Deflate(flate2::write::ZlibDecoder<Sink>),
    Br(Box<brotli::DecompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Decoder<'static, Sink>),
}

/// Decodes a body as it streams.
pub struct Decoder(Dec);

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Decoder")
    }
}

impl Decoder {
    pub fn new(c: Coding) -> std::io::Result<Decoder> {
        Ok(Decoder(match c {
            Coding::Gzip => Dec::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Coding::Deflate => Dec::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            Coding::Br => Dec::Br(Box::new(brotli::DecompressorWriter::new(Vec::new(), 8192))),
            Coding::Zstd => Dec::Zstd(zstd::stream::write::Decoder::new(Vec::new())?),
        }))
    }

    /// Decodes `data`; returns the plain bytes available so far.
    pub fn feed(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let sink = match &mut self.0 {
            Dec::Gzip(d) => {
                d.write_all(data)?;
                d.flush()?;
                d.get_mut()
            }
            Dec::Deflate(d) => {
                d.write_all(data)?;
                d.flush()?;
                d.get_mut()
            }
            Dec::Br(d) => {
                d.write_all(data)?;
                d.flush()?;
                d.get_mut()
            }
            Dec::Zstd(d) => {
                d.write_all(data)?;
                d.flush()?;
                d.get_mut()
            }
        };
        Ok(std::mem::take(sink))
    }
}

enum Enc {
    Gzip(flate2::write::GzEncoder<Sink>),
    Deflate(flate2::write::ZlibEncoder<Sink>),
    Br(Box<brotli::CompressorWriter<Sink>>),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
}

/// Encodes a body as it streams; every `feed` is flushed to a decodable boundary.
pub struct Encoder(Option<Enc>);

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Encoder")
    }
}

impl Encoder {
    /// A fast default level for each coding (streamed text compresses well at these).
    pub fn new(c: Coding) -> std::io::Result<Encoder> {
        Self::with_level(c, None)
    }

    /// `level`: gzip/deflate 1-9 (default 5), br 0-11 (default 4), zstd 1-22 (default 3).
    pub fn with_level(c: Coding, level: Option<u32>) -> std::io::Result<Encoder> {
        let flate = || flate2::Compression::new(level.unwrap_or(5).clamp(1, 9));
        Ok(Encoder(Some(match c {
            Coding::Gzip => Enc::Gzip(flate2::write::GzEncoder::new(Vec::new(), flate())),
            Coding::Deflate => Enc::Deflate(flate2::write::ZlibEncoder::new(Vec::new(), flate())),
            Coding::Br => Enc::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                8192,
                level.unwrap_or(4).min(11),
                22,
            ))),
            Coding::Zstd => Enc::Zstd(zstd::stream::write::Encoder::new(
                Vec::new(),
                level.unwrap_or(3).clamp(1, 22) as i32,
            )?),
        })))
    }

    pub fn feed(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        let sink = match self.0.as_mut() {
            None => return Ok(Vec::new()),
            Some(Enc::Gzip(e)) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Some(Enc::Deflate(e)) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Some(Enc::Br(e)) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
            Some(Enc::Zstd(e)) => {
                e.write_all(data)?;
                e.flush()?;
                e.get_mut()
            }
        };
        Ok(std::mem::take(sink))
    }

    /// Ends the stream (trailer, checksums); later calls return nothing.
    pub fn finish(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(match self.0.take() {
            None => Vec::new(),
            Some(Enc::Gzip(e)) => e.finish()?,
            Some(Enc::Deflate(e)) => e.finish()?,
            Some(Enc::Br(e)) => e.into_inner(),
            Some(Enc::Zstd(e)) => e.finish()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_coding_roundtrips_in_chunks() {
        let text: Vec<u8> = (0..20_000u32)
            .flat_map(|i| format!("<p>line {i}</p>\n").into_bytes())
            .collect();
        for c in [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd] {
            let mut enc = Encoder::new(c).unwrap();
            let mut wire = Vec::new();
            for part in text.chunks(7000) {
                let out = enc.feed(part).unwrap();
                // Flushed: each chunk produces output at once.
                assert!(!out.is_empty(), "{c:?}");
                wire.extend(out);
            }
            wire.extend(enc.finish().unwrap());
            assert!(wire.len() < text.len() / 3, "{c:?} {}", wire.len());
            let mut dec = Decoder::new(c).unwrap();
            let mut plain = Vec::new();
            for part in wire.chunks(999) {
                plain.extend(dec.feed(part).unwrap());
            }
            assert_eq!(plain, text, "{c:?}");
        }
    }

    #[test]
    fn names_and_garbage() {
        assert_eq!(Coding::from_content_encoding(None), Ok(None));
        assert_eq!(Coding::from_content_encoding(Some("identity")), Ok(None));
        assert_eq!(
            Coding::from_content_encoding(Some("GZIP")),
            Ok(Some(Coding::Gzip))
        );
        assert!(Coding::from_content_encoding(Some("gzip, br")).is_err());
        assert!(Coding::from_content_encoding(Some("compress")).is_err());
        let mut d = Decoder::new(Coding::Gzip).unwrap();
        assert!(d.feed(b"definitely not gzip").is_err());
    }
}
