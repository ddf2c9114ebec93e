//! tonic codecs that carry an `ExportTraceServiceRequest` as its encoded bytes: the
//! client's sends an already encoded request as it is, the server's hands the received
//! request on undecoded; the response is a prost message either way. Written here because
//! tonic's prost codec needs a message struct, and decoding into structs only to encode
//! them again (exporter) or to scan them (receivers) would double the cost.

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// The gRPC service name of the OTLP trace export.
pub const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The gRPC method path of the OTLP trace export.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The client side: sends encoded requests, decodes responses.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawExportCodec;

impl Codec for RawExportCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesCoder;
    type Decoder = ResponseCoder;

    fn encoder(&mut self) -> BytesCoder {
        BytesCoder
    }

    fn decoder(&mut self) -> ResponseCoder {
        ResponseCoder
    }
}

/// The server side: receives encoded requests, encodes responses.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawExportServerCodec;

impl Codec for RawExportServerCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = Bytes;
    type Encoder = ResponseCoder;
    type Decoder = BytesCoder;

    fn encoder(&mut self) -> ResponseCoder {
        ResponseCoder
    }

    fn decoder(&mut self) -> BytesCoder {
        BytesCoder
    }
}

/// A message as its bytes, both ways.
#[derive(Debug)]
pub struct BytesCoder;

impl Encoder for BytesCoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for BytesCoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
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
