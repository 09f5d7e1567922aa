use super::*;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};

/// A real POSIX shared-memory object in /dev/shm, removed on drop.
struct Object(String);

impl Object {
    fn new(tag: &str, bytes: &[u8]) -> Object {
        let name = format!("tern_test_{tag}_{}", std::process::id());
        std::fs::write(Path::new(SHM_DIR).join(&name), bytes).expect("write /dev/shm");
        Object(name)
    }
    fn key(&self) -> String {
        format!("/{}", self.0)
    }
    fn read(&self) -> Vec<u8> {
        std::fs::read(Path::new(SHM_DIR).join(&self.0)).expect("read /dev/shm")
    }
}

impl Drop for Object {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(Path::new(SHM_DIR).join(&self.0));
    }
}

use std::path::Path;

fn answer<T>(r: Result<T, Status>) -> Option<(tonic::Code, String)> {
    r.err().map(|s| (s.code(), s.message().to_string()))
}

fn param_str(s: &str) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::StringParam(s.into())) }
}

fn param_int(v: i64) -> InferParameter {
    InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(v)) }
}

fn in_region(region: &str, offset: i64, byte_size: i64) -> HashMap<String, InferParameter> {
    HashMap::from([
        (REGION.to_string(), param_str(region)),
        (OFFSET.to_string(), param_int(offset)),
        (BYTE_SIZE.to_string(), param_int(byte_size)),
    ])
}

#[test]
fn disabled_refuses_registration_and_keeps_status_empty() {
    let shm = SystemShm::new(false);
    let refused = Some((tonic::Code::Unimplemented, CLIENT_SHM_DISABLED.to_string()));
    assert_eq!(answer(shm.register("r", "/x", 0, 8)), refused);
    assert_eq!(answer(shm.unregister("")), refused);
    assert_eq!(answer(shm.cuda_register("r")), refused);
    assert_eq!(answer(shm.cuda_unregister()), refused);
    assert!(shm.status("").is_ok_and(|s| s.regions.is_empty()));
    assert_eq!(
        answer(shm.status("r")),
        Some((tonic::Code::NotFound, "Unable to find system shared memory region: 'r'".into()))
    );
}

#[test]
fn registration_is_checked_as_triton_checks_it() {
    let object = Object::new("reg", &[0u8; 64]);
    let shm = SystemShm::new(true);
    let invalid = |m: &str| Some((tonic::Code::InvalidArgument, m.to_string()));
    assert_eq!(
        answer(shm.register("r", "///", 0, 8)),
        invalid("cannot register shared memory region 'r' - invalid shm key '///'")
    );
    assert!(
        answer(shm.register("r", "/triton_python_backend_shm_region_1", 0, 8))
            .is_some_and(|(c, m)| c == tonic::Code::InvalidArgument && m.contains("reserved prefix"))
    );
    for key in ["/../etc/passwd", "/a/b", "..", "/.", "/tern_no_such_object"] {
        assert_eq!(
            answer(shm.register("r", key, 0, 8)),
            Some((tonic::Code::Internal, format!("Unable to open shared memory region: '{key}'"))),
            "{key}"
        );
    }
    let bounds = invalid("failed to register shared memory region 'r': invalid args");
    assert_eq!(answer(shm.register("r", &object.key(), 60, 8)), bounds);
    assert_eq!(answer(shm.register("r", &object.key(), u64::MAX, 8)), bounds);
    assert_eq!(answer(shm.register("r", &object.key(), 0, 0)), bounds);
    assert!(shm.register("r", &object.key(), 8, 56).is_ok());
    assert_eq!(
        answer(shm.register("r", &object.key(), 0, 8)),
        Some((tonic::Code::AlreadyExists, "shared memory region 'r' already in manager".into()))
    );
    let status = shm.status("r").expect("status");
    let r = &status.regions["r"];
    assert_eq!((r.name.as_str(), r.key.clone(), r.offset, r.byte_size), ("r", object.key(), 8, 56));
    assert!(
        answer(shm.cuda_status("r")).is_some_and(|(_, m)| m.contains("registered as system shared memory"))
    );
    assert_eq!(
        answer(shm.cuda_register("c")),
        invalid("failed to register CUDA shared memory region: 'c', GPUs not supported")
    );
    assert!(shm.cuda_unregister().is_ok() && shm.cuda_status("").is_ok());
    assert!(shm.unregister("not-there").is_ok());
    assert!(shm.unregister("").is_ok() && shm.is_empty());
}

fn request(inputs: Vec<InferInputTensor>, outputs: Vec<InferRequestedOutputTensor>) -> pb::ModelInferRequest {
    pb::ModelInferRequest { model_name: "m".into(), inputs, outputs, ..Default::default() }
}

fn input(name: &str, parameters: HashMap<String, InferParameter>) -> InferInputTensor {
    InferInputTensor {
        name: name.into(),
        datatype: "INT32".into(),
        shape: vec![2],
        parameters,
        contents: None,
    }
}

#[test]
fn inputs_are_views_and_outputs_are_written_even_after_unregister() {
    let bytes: Vec<u8> = (0u8..32).collect();
    let object = Object::new("io", &bytes);
    let shm = SystemShm::new(true);
    shm.register("in", &object.key(), 0, 16).expect("register in");
    shm.register("out", &object.key(), 16, 16).expect("register out");
    let outputs = vec![InferRequestedOutputTensor { name: "O".into(), parameters: in_region("out", 4, 8) }];
    let mut req = request(vec![input("A", HashMap::new()), input("B", in_region("in", 8, 8))], outputs);
    req.raw_input_contents = vec![Bytes::from_static(&[9; 8])];
    let pending = shm.resolve(&mut req).expect("resolve").expect("uses shared memory");
    assert_eq!(req.raw_input_contents[0].as_ref(), &[9; 8]);
    assert_eq!(req.raw_input_contents[1].as_ref(), &bytes[8..16]);
    assert!(req.inputs[1].parameters.is_empty() && req.outputs[0].parameters.is_empty());

    // Unregistered while in flight: the request still holds both mappings.
    shm.unregister("").expect("unregister");
    assert_eq!(req.raw_input_contents[1].as_ref(), &bytes[8..16]);
    let mut response = pb::ModelInferResponse {
        outputs: vec![pb::model_infer_response::InferOutputTensor { name: "O".into(), ..Default::default() }],
        raw_output_contents: vec![Bytes::from_static(&[7; 8])],
        ..Default::default()
    };
    pending.write(&mut response).expect("write");
    assert_eq!(response.raw_output_contents, vec![Bytes::new()], "an empty entry keeps alignment");
    assert_eq!(&object.read()[20..28], &[7; 8]);
}

#[test]
fn bad_references_name_model_tensor_and_region() {
    let object = Object::new("bad", &[0u8; 16]);
    let shm = SystemShm::new(true);
    shm.register("r", &object.key(), 0, 16).expect("register");
    let resolve = |inputs, outputs| {
        let mut req = request(inputs, outputs);
        shm.resolve(&mut req).err().map(|e| e.to_string())
    };
    assert_eq!(
        resolve(vec![input("A", in_region("nope", 0, 8))], vec![]),
        Some("Unable to find shared memory region: 'nope' (input 'A' of model 'm')".into())
    );
    assert_eq!(
        resolve(vec![input("A", in_region("r", 16, 8))], vec![]),
        Some("Invalid offset for shared memory region: 'r' (input 'A' of model 'm')".into())
    );
    assert_eq!(
        resolve(vec![input("A", in_region("r", 12, 8))], vec![]),
        Some("Invalid offset + byte size for shared memory region: 'r' (input 'A' of model 'm')".into())
    );
    assert_eq!(
        resolve(vec![input("A", in_region("r", -1, 8))], vec![]),
        Some("Invalid offset for shared memory region: 'r' (input 'A' of model 'm')".into())
    );
    let orphan = HashMap::from([(OFFSET.to_string(), param_int(0))]);
    assert!(
        resolve(vec![input("A", orphan)], vec![]).is_some_and(|m| m.contains("can not be specified without"))
    );
    let no_size = HashMap::from([(REGION.to_string(), param_str("r"))]);
    assert!(
        resolve(vec![input("A", no_size)], vec![]).is_some_and(|m| m.contains("must be specified along"))
    );

    let mut req = request(
        vec![],
        vec![InferRequestedOutputTensor { name: "O".into(), parameters: in_region("r", 0, 4) }],
    );
    let pending = shm.resolve(&mut req).expect("resolve").expect("uses shared memory");
    let mut response = pb::ModelInferResponse {
        outputs: vec![pb::model_infer_response::InferOutputTensor { name: "O".into(), ..Default::default() }],
        raw_output_contents: vec![Bytes::from_static(&[1; 8])],
        ..Default::default()
    };
    assert_eq!(
        pending.write(&mut response).err().map(|e| e.to_string()),
        Some("shared memory size specified with the request for output 'O' (4 bytes) should be at least 8 bytes to hold the results (model 'm', region 'r')".into())
    );
    let mut plain = request(vec![input("A", HashMap::new())], vec![]);
    assert!(shm.resolve(&mut plain).is_ok_and(|p| p.is_none()), "no region named: untouched");
}

#[test]
fn bounded_number_of_regions() {
    let object = Object::new("many", &[0u8; 8]);
    let shm = SystemShm::new(true);
    for i in 0..MAX_REGIONS {
        shm.register(&format!("r{i}"), &object.key(), 0, 8).expect("register");
    }
    assert!(
        answer(shm.register("one-more", &object.key(), 0, 8))
            .is_some_and(|(c, _)| c == tonic::Code::ResourceExhausted)
    );
}
