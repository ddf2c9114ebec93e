//! A tonic codec for sending encoded requests through tonic's client (the load generator
//! and tests do): an already encoded `ExportTraceServiceRequest` goes out as it is, and the
//! response is decoded with prost. Written here because tonic's prost codec needs a message
//! struct, and decoding the request into structs only to encode it again would double the
//! cost. It sizes tonic's encode buffer to the request: tonic starts it at 8 KiB and doubles
//! it, copying, until a request of a few hundred KiB fits. (The receivers serve the unary
//! call themselves, see `receiver::grpc`, and the `otlp` exporter makes it itself, see
//! `exporter::otlp_grpc`.)

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The gRPC service name of the OTLP trace export.
pub const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The gRPC method path of the OTLP trace export.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A gRPC message's prefix: the compressed flag and the length.
const GRPC_PREFIX: usize = 5;
/// tonic's own starting buffer size, kept for messages smaller than it.
const MIN_BUFFER: usize = 8 * 1024;
/// tonic's point at which an encoded stream yields a frame (unary calls have one message).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Sends encoded requests, decodes responses.
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
    type Encoder = RequestEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder {
            buffer: (GRPC_PREFIX + self.message_bytes).max(MIN_BUFFER),
        }
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// An encoded request as its bytes, with tonic's buffer sized for it.
#[derive(Debug)]
pub struct RequestEncoder {
    buffer: usize,
}

impl Encoder for RequestEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(self.buffer, YIELD_THRESHOLD)
    }
}

/// The export response, with prost.
#[derive(Debug)]
pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("invalid export response: {e}")))
    }
}
