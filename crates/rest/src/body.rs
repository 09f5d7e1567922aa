//! Request and response bodies: reading with a bound, gzip and deflate as Triton's
//! `Content-Encoding` and `Accept-Encoding` (server src/http_server.cc,
//! `GetRequestCompressionType`, `GetResponseCompressionType`; deflate is the zlib format, as
//! tritonclient sends it), and a response body of several buffers sent without joining them.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::Read;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, header};
use http_body::{Frame, SizeHint};

use crate::error::RestError;

/// A body compression Triton's HTTP front end speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    pub fn name(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }
}

fn over_limit(size: impl std::fmt::Display, limit: usize) -> RestError {
    RestError::bad_request(format!(
        "request body of {size} bytes is over the server's limit of {limit} bytes (--grpc-max-message-size)"
    ))
}

/// Reads the whole body, at most `limit` bytes (after decompression too).
pub async fn read(headers: &HeaderMap, body: axum::body::Body, limit: usize) -> Result<Bytes, RestError> {
    let coding = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().unwrap_or("?").trim()) {
        None | Some("") | Some("identity") => None,
        Some("gzip") => Some(Coding::Gzip),
        Some("deflate") => Some(Coding::Deflate),
        Some(_) => return Err(RestError::new(StatusCode::NOT_IMPLEMENTED, "Unsupported compression type")),
    };
    if let Some(declared) = headers.get(header::CONTENT_LENGTH) {
        let declared = declared
            .to_str()
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| RestError::bad_request("Unable to parse Content-Length"))?;
        if declared > limit as u64 {
            return Err(over_limit(declared, limit));
        }
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.to_string().contains("length limit exceeded"))
            || e.to_string().contains("length limit exceeded");
        if too_large {
            over_limit(format!("more than {limit}"), limit)
        } else {
            RestError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    let Some(coding) = coding else { return Ok(bytes) };
    // Decompression is CPU work: off the async workers.
    tokio::task::spawn_blocking(move || decompress(coding, &bytes, limit))
        .await
        .map_err(|e| RestError::internal(format!("decompression task failed: {e}")))?
}

fn decompress(coding: Coding, compressed: &[u8], limit: usize) -> Result<Bytes, RestError> {
    let mut out = Vec::new();
    let bound = limit as u64 + 1;
    let result = match coding {
        Coding::Gzip => flate2::read::GzDecoder::new(compressed).take(bound).read_to_end(&mut out),
        Coding::Deflate => flate2::read::ZlibDecoder::new(compressed).take(bound).read_to_end(&mut out),
    };
    result.map_err(|e| {
        RestError::bad_request(format!("cannot decompress the {} request body: {e}", coding.name()))
    })?;
    if out.len() > limit {
        return Err(over_limit(format!("more than {limit} (decompressed)"), limit));
    }
    Ok(Bytes::from(out))
}

/// The response coding for `Accept-Encoding`: the preferred of gzip and deflate by q-value
/// (ties go to the first listed), none when neither is acceptable.
pub fn accepted(headers: &HeaderMap) -> Option<Coding> {
    let value = headers.get(header::ACCEPT_ENCODING)?.to_str().ok()?;
    let mut best: Option<(Coding, f32)> = None;
    for item in value.split(',') {
        let mut parts = item.split(';');
        let coding = match parts.next().map(str::trim) {
            Some("gzip") => Coding::Gzip,
            Some("deflate") => Coding::Deflate,
            _ => continue,
        };
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((coding, q));
        }
    }
    best.map(|(c, _)| c)
}

/// Compresses `parts` as one stream (a copy, as with any compression).
pub fn compress(coding: Coding, parts: &[Bytes]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let level = flate2::Compression::default();
    match coding {
        Coding::Gzip => {
            let mut w = flate2::write::GzEncoder::new(Vec::new(), level);
            parts.iter().try_for_each(|p| w.write_all(p))?;
            w.finish()
        }
        Coding::Deflate => {
            let mut w = flate2::write::ZlibEncoder::new(Vec::new(), level);
            parts.iter().try_for_each(|p| w.write_all(p))?;
            w.finish()
        }
    }
}

/// A body of several buffers with an exact length (so `Content-Length` is set).
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    pub fn new(chunks: Vec<Bytes>) -> Chunks {
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks { chunks: chunks.into_iter().filter(|c| !c.is_empty()).collect(), remaining }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        Poll::Ready(next.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_picks_by_q_value() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT_ENCODING, "br, deflate;q=0.5, gzip".parse().expect("header"));
        assert_eq!(accepted(&h), Some(Coding::Gzip));
        h.insert(header::ACCEPT_ENCODING, "gzip;q=0, deflate".parse().expect("header"));
        assert_eq!(accepted(&h), Some(Coding::Deflate));
        h.insert(header::ACCEPT_ENCODING, "identity".parse().expect("header"));
        assert_eq!(accepted(&h), None);
    }

    #[test]
    fn compressed_bodies_round_trip_and_decompression_is_bounded() {
        let parts = [Bytes::from_static(b"hello "), Bytes::from(vec![7u8; 10_000])];
        for coding in [Coding::Gzip, Coding::Deflate] {
            let z = compress(coding, &parts).expect("compress");
            assert!(z.len() < 1000);
            let back = decompress(coding, &z, 20_000).expect("decompress");
            assert_eq!(back.len(), 10_006);
            let e = decompress(coding, &z, 5_000).expect_err("bomb");
            assert!(e.message.contains("--grpc-max-message-size"), "{e:?}");
        }
    }
}
