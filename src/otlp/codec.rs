//! tonic codecs that carry an `ExportTraceServiceRequest` as its encoded bytes: the
//! client's sends an already encoded request as it is, the server's hands the received
//! request on undecoded; the response is a prost message either way. Written here because
//! tonic's prost codec needs a message struct, and decoding into structs only to encode
//! them again (exporter) or to scan them (receivers) would double the cost. Both size
//! tonic's buffer for the request to the message at hand: tonic starts it at 8 KiB and
//! doubles it, copying, until a request of a few hundred KiB fits.

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A gRPC message's prefix: the compressed flag and the length.
const GRPC_PREFIX: usize = 5;
/// tonic's own starting buffer size, kept for messages smaller than it.
const MIN_BUFFER: usize = 8 * 1024;
/// tonic's point at which an encoded stream yields a frame (unary calls have one message).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The gRPC service name of the OTLP trace export.
pub const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The gRPC method path of the OTLP trace export.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The client side: sends encoded requests, decodes responses.
#[derive(Debug, Clone, Copy)]
pub struct RawExportCodec {
    message_bytes: usize,
}

impl RawExportCodec {
    /// For sending a request of `message_bytes`.
    pub fn for_message(message_bytes: usize) -> Self {
        Self { message_bytes }
    }
}

impl Codec for RawExportCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesCoder;
    type Decoder = ResponseCoder;

    fn encoder(&mut self) -> BytesCoder {
        BytesCoder::for_message(self.message_bytes)
    }

    fn decoder(&mut self) -> ResponseCoder {
        ResponseCoder
    }
}

/// The server side: receives encoded requests, encodes responses.
#[derive(Debug, Clone, Copy)]
pub struct RawExportServerCodec {
    message_bytes: usize,
}

impl RawExportServerCodec {
    /// For receiving a request of `message_bytes` (as its prefix states).
    pub fn for_message(message_bytes: usize) -> Self {
        Self { message_bytes }
    }
}

impl Codec for RawExportServerCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseCoder;
    type Decoder = BytesCoder;

    fn encoder(&mut self) -> ResponseCoder {
        ResponseCoder
    }

    fn decoder(&mut self) -> BytesCoder {
        BytesCoder::for_message(self.message_bytes)
    }
}

/// A message as its bytes, both ways, with tonic's buffer sized for it.
#[derive(Debug)]
pub struct BytesCoder {
    buffer: usize,
}

impl BytesCoder {
    fn for_message(message_bytes: usize) -> Self {
        Self {
            buffer: (GRPC_PREFIX + message_bytes).max(MIN_BUFFER),
        }
    }

    fn settings(&self) -> BufferSettings {
        BufferSettings::new(self.buffer, YIELD_THRESHOLD)
    }
}

impl Encoder for BytesCoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.settings()
    }
}

impl Decoder for BytesCoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.settings()
    }
}

/// The export response, with prost, both ways.
#[derive(Debug)]
pub struct ResponseCoder;

impl Encoder for ResponseCoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(
        &mut self,
        item: ExportTraceServiceResponse,
        dst: &mut EncodeBuf<'_>,
    ) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("cannot encode the response: {e}")))
    }
}

impl Decoder for ResponseCoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("invalid export response: {e}")))
    }
}
