//! Client shared memory at the router: a router may run on another host than its nodes, so it
//! serves regions itself. A ModelInfer naming a region registered with the router is decoded,
//! its shared-memory inputs become raw contents (`tern_core::shm`), the request goes to a node
//! as any other, and the outputs asked in regions are written into them before the response
//! (without their data) goes back. While the router holds no region, requests pass as bytes,
//! untouched. ModelStreamInfer is relayed as bytes: a node resolves its regions (in `tern
//! serve` the node shares the router's registry).

use bytes::Bytes;
use prost::Message;
use tern_proto::inference as pb;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status};

use crate::forward::Forwarder;

/// ModelInfer as bytes, through the router's regions when the request names one.
pub(crate) async fn infer(
    forwarder: &Forwarder,
    shm: &tern_edge::triton::SystemShm,
    metadata: MetadataMap,
    body: Bytes,
    caller: Option<&tern_edge::Principal>,
) -> Result<Response<Bytes>, Status> {
    if shm.is_empty() {
        return Ok(forwarder.infer(metadata, body, caller).await?);
    }
    let mut request = pb::ModelInferRequest::decode(body.clone())
        .map_err(|e| Status::invalid_argument(format!("malformed ModelInferRequest: {e}")))?;
    let Some(outputs) = shm.resolve(&mut request)? else {
        return Ok(forwarder.infer(metadata, body, caller).await?);
    };
    let reply = forwarder.infer(metadata, Bytes::from(request.encode_to_vec()), caller).await?;
    let (metadata, bytes, extensions) = reply.into_parts();
    let mut response = pb::ModelInferResponse::decode(bytes)
        .map_err(|e| Status::internal(format!("malformed ModelInferResponse from a node: {e}")))?;
    outputs.write(&mut response)?;
    Ok(Response::from_parts(metadata, Bytes::from(response.encode_to_vec()), extensions))
}
