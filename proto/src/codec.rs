//! The codec of Huren's services: prost's, except that bytes that do not decode as the
//! expected message are the sender's fault, answered INVALID_ARGUMENT (prost's codec answers
//! INTERNAL, as if the hub had failed). Used on both sides; a client meeting an answer that
//! does not decode gets INVALID_ARGUMENT with prost's message too.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

/// [`ProstCodec`] with decoding errors reported as INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct HurenCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Codec for HurenCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = HurenDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        HurenDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; bytes that are not a `U` are INVALID_ARGUMENT.
#[derive(Debug, Clone, Default)]
pub struct HurenDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for HurenDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "the request is not a valid protobuf message of the expected type: {e}"
            ))
        })
    }
}
