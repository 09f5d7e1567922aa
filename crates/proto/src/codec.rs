//! The codec of every generated client and server: tonic's prost codec with a first message
//! buffer of 1 KiB instead of tonic's 8 KiB.
//!
//! tonic allocates that buffer for every call, once to decode the request and once to encode the
//! response. Most messages of this protocol are small (metadata, health, a small model's
//! tensors), and glibc serves a buffer of up to 1 KiB from its per-thread cache, while each 8 KiB
//! one takes the arena's slower path, which also consolidates freed small chunks first. Larger
//! messages grow the buffer as before: decoding reserves the announced length at once, encoding
//! grows it by doubling.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// The first buffer of each encode and decode, in bytes.
pub const FIRST_BUFFER_BYTES: usize = 1024;
/// tonic's default: a stream yields to the runtime after this many encoded bytes.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`tonic_prost::ProstCodec`] with [`FIRST_BUFFER_BYTES`].
#[derive(Debug, Clone, Copy)]
pub struct SmallBufferCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(FIRST_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
