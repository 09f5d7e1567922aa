//! TEMPORARY (edge helper, branch g-edge): StreamOne for the node so the HTTP generate routes
//! compile, until the node helper's own implementation (branch g-node) is merged. Delete then.

use tern_proto::inference as pb;

use crate::service::NodeService;

impl tern_edge::triton::StreamOne for NodeService {
    fn stream_one(
        &self,
        request: pb::ModelInferRequest,
        _metadata: tonic::metadata::MetadataMap,
        caller: Option<tern_edge::Principal>,
    ) -> tern_edge::triton::InferResponses {
        use tern_proto::inference::grpc_inference_service_server::GrpcInferenceService;
        let service = self.clone();
        Box::pin(futures::stream::once(async move {
            let mut request = tonic::Request::new(request);
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            service.model_infer(request).await.map(tonic::Response::into_inner)
        }))
    }
}
