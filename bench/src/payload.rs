//! Asset bytes for uploads, produced as a stream of cheap `Bytes` slices so that a 200 MiB
//! upload costs the client neither 200 MiB of memory nor a random-number generator's time.
//! A short per-upload header makes each upload's digest unique; the rest repeats one block of
//! pseudo-random filler (hashes and the disk don't care that it repeats).

use std::path::Path;

use bytes::{BufMut, Bytes, BytesMut};
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use tokio::io::AsyncWriteExt;

use crate::error::{Context, Result};

pub const MIB: u64 = 1024 * 1024;

/// Size of the filler block, and so the largest chunk of a request body.
const FILLER_BYTES: usize = 256 * 1024;

/// Pseudo-random bytes that every payload reuses.
#[derive(Clone)]
pub struct Filler(Bytes);

impl Filler {
    pub fn new(seed: u64) -> Filler {
        let mut block = vec![0u8; FILLER_BYTES];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut block);
        Filler(block.into())
    }
}

/// A WAV file (as far as the server's magic-byte check goes) of an exact length.
#[derive(Clone)]
pub struct WavPayload {
    head: Bytes,
    filler: Bytes,
    len: u64,
}

impl WavPayload {
    /// `len` bytes; payloads with different `tag`s have different digests.
    pub fn new(len: u64, tag: u64, filler: &Filler) -> WavPayload {
        let mut head = BytesMut::with_capacity(64);
        head.put_slice(b"RIFF");
        head.put_u32_le(u32::try_from(len.saturating_sub(8)).unwrap_or(u32::MAX));
        head.put_slice(b"WAVE");
        head.put_slice(format!("atelier-bench payload {tag:020}\n").as_bytes());
        let head = head.freeze();
        debug_assert!(len >= head.len() as u64, "payload shorter than its header");
        WavPayload {
            head,
            filler: filler.0.clone(),
            len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// The bytes, in order, in chunks of at most the filler's size.
    pub fn chunks(&self) -> impl Iterator<Item = Bytes> + Send + 'static {
        let head = self.head.clone();
        let filler = self.filler.clone();
        let mut left = self.len.saturating_sub(head.len() as u64);
        std::iter::once(head).chain(std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            let n = left.min(filler.len() as u64) as usize;
            left -= n as u64;
            Some(filler.slice(..n))
        }))
    }

    /// A streaming request body (nothing is copied).
    pub fn into_body(self) -> reqwest::Body {
        let chunks = self.chunks().map(Ok::<Bytes, std::io::Error>);
        reqwest::Body::wrap_stream(futures::stream::iter(chunks))
    }

    /// Writes the same bytes to a file (for the hashing baseline).
    pub async fn write_to(&self, path: &Path) -> Result<()> {
        let file = tokio::fs::File::create(path)
            .await
            .context(format_args!("creating {}", path.display()))?;
        let mut out = tokio::io::BufWriter::new(file);
        for chunk in self.chunks() {
            out.write_all(&chunk)
                .await
                .context(format_args!("writing {}", path.display()))?;
        }
        out.flush()
            .await
            .context(format_args!("writing {}", path.display()))
    }
}

/// A tiny distinct SVG document (an IMAGE_VECTOR asset for costumes).
pub fn svg(tag: u64) -> Vec<u8> {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"2\" height=\"2\"><!-- {tag} --></svg>"
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_exact_length_and_wav_magic() {
        let filler = Filler::new(7);
        for len in [64, FILLER_BYTES as u64, 3 * MIB + 5] {
            let p = WavPayload::new(len, 1, &filler);
            let bytes: Vec<u8> = p.chunks().flat_map(|c| c.to_vec()).collect();
            assert_eq!(bytes.len() as u64, len);
            assert_eq!(&bytes[..4], b"RIFF");
            assert_eq!(&bytes[8..12], b"WAVE");
        }
    }

    #[test]
    fn tags_make_payloads_differ() {
        let filler = Filler::new(7);
        let a: Vec<Bytes> = WavPayload::new(MIB, 1, &filler).chunks().collect();
        let b: Vec<Bytes> = WavPayload::new(MIB, 2, &filler).chunks().collect();
        assert_ne!(a, b);
    }
}
