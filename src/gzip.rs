//! The gzip format (RFC 1952): one-shot compression with a deflater reused per thread, and
//! inflation with a hard cap.

use std::cell::RefCell;
use std::io::Read;

use bytes::Bytes;
use flate2::{Compress, Compression, Crc, FlushCompress, Status};

/// gzip member header: magic, deflate, no flags, no mtime, no extra flags, OS "unknown".
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

thread_local! {
    /// A deflater's state is ~300 KiB; building one per message would cost more than the
    /// compression itself, so each worker thread keeps one and resets it.
    static DEFLATER: RefCell<Option<(u32, Compress)>> = const { RefCell::new(None) };
}

/// Compresses `data` into one gzip member.
pub fn compress(data: &[u8], level: u32) -> Bytes {
    DEFLATER.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, Compress::new(Compression::new(level), false)));
        }
        let (_, deflater) = slot.as_mut().expect("set above");
        deflater.reset();
        let mut out = Vec::with_capacity(HEADER.len() + data.len() / 2 + 64);
        out.extend_from_slice(&HEADER);
        loop {
            let consumed = deflater.total_in() as usize;
            let status = deflater
                .compress_vec(&data[consumed..], &mut out, FlushCompress::Finish)
                .expect("deflate into a growing buffer cannot fail");
            if status == Status::StreamEnd {
                break;
            }
            out.reserve(out.capacity().max(64));
        }
        let mut crc = Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Bytes::from(out)
    })
}

/// Why an inbound gzip message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// Not a gzip member (bad header, corrupt or truncated data).
    #[error("binary message is not valid gzip")]
    NotGzip,
    /// Inflated past the cap: a gzip bomb or simply too large.
    #[error("inflated message exceeds {0} bytes")]
    TooBig(usize),
    /// Inflated fine, but the text is not UTF-8.
    #[error("inflated message is not UTF-8")]
    NotUtf8,
}

/// Inflates every gzip member of `data` (RFC 1952 allows several, as `gunzip` and browsers
/// decode them), reading at most `cap + 1` bytes of output so a bomb costs no more than the cap.
/// Trailing bytes that are not a member are an error.
pub fn inflate(data: &[u8], cap: usize) -> Result<String, InflateError> {
    if data.is_empty() {
        return Err(InflateError::NotGzip);
    }
    let mut out = Vec::with_capacity((data.len() * 4).min(cap + 1));
    flate2::read::MultiGzDecoder::new(data)
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| InflateError::NotGzip)?;
    if out.len() > cap {
        return Err(InflateError::TooBig(cap));
    }
    String::from_utf8(out).map_err(|_| InflateError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn round_trip_through_a_reference_decoder() {
        for text in ["", "hello", &"wscast ".repeat(10_000), "\u{1F600} utf-8 \u{e9}"] {
            for level in [0, 1, 6, 9] {
                let gz = compress(text.as_bytes(), level);
                let mut back = String::new();
                flate2::read::GzDecoder::new(&gz[..]).read_to_string(&mut back).unwrap();
                assert_eq!(back, text, "level {level}");
                assert_eq!(inflate(&gz, text.len().max(1)).unwrap(), text);
            }
        }
    }

    #[test]
    fn inflate_refuses_bombs_garbage_truncation_and_bad_utf8() {
        let bomb = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::best());
            e.write_all(&vec![b'a'; 10 << 20]).unwrap();
            e.finish().unwrap()
        };
        assert!(bomb.len() < 64 * 1024);
        assert_eq!(inflate(&bomb, 65536), Err(InflateError::TooBig(65536)));
        assert_eq!(inflate(b"plain text", 65536), Err(InflateError::NotGzip));
        let gz = compress(b"hello world", 6);
        assert_eq!(inflate(&gz[..gz.len() - 5], 65536), Err(InflateError::NotGzip));
        assert_eq!(inflate(&compress(&[0xff, 0xfe], 6), 65536), Err(InflateError::NotUtf8));
        assert_eq!(inflate(b"", 65536), Err(InflateError::NotGzip), "an empty message is not gzip");
    }

    #[test]
    fn every_member_is_inflated_and_trailing_garbage_refused() {
        let mut two = compress(b"hello ", 6).to_vec();
        two.extend_from_slice(&compress(b"world", 1));
        assert_eq!(inflate(&two, 65536).unwrap(), "hello world");
        let mut garbage = compress(b"hello", 6).to_vec();
        garbage.extend_from_slice(b"trailing");
        assert_eq!(inflate(&garbage, 65536), Err(InflateError::NotGzip));
        // The cap counts all members together.
        assert_eq!(inflate(&two, 8), Err(InflateError::TooBig(8)));
    }
}
