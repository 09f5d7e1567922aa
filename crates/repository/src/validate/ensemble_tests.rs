use super::*;
use crate::parse_config;

fn config(text: &str) -> ModelConfig {
    parse_config(text).unwrap_or_else(|err| panic!("test config does not parse: {err}"))
}

/// An ensemble `e` on FP32 [16]: x -> pre(IN -> OUT) -> mid -> post(IN -> OUT) -> y, with
/// `steps` replacing the steps when given.
fn ensemble(steps: Option<&str>) -> ModelConfig {
    let steps = steps.unwrap_or(
        r#"{ model_name: "pre" model_version: -1 input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "mid" } },
           { model_name: "post" model_version: -1 input_map { key: "IN" value: "mid" } output_map { key: "OUT" value: "y" } }"#,
    );
    config(&format!(
        r#"
        name: "e"
        platform: "ensemble"
        max_batch_size: 8
        input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 16 ] }} ]
        ensemble_scheduling {{ step [ {steps} ] }}
        "#
    ))
}

fn message(config: &ModelConfig) -> String {
    match validate_ensemble(config) {
        Ok(_) => "ok".to_owned(),
        Err(err) => err.to_string(),
    }
}

/// A step model `name` with IN -> OUT of `data_type` and `dims`.
fn step_model(name: &str, max_batch_size: i32, data_type: &str, dims: &str) -> ModelConfig {
    config(&format!(
        r#"
        name: "{name}"
        max_batch_size: {max_batch_size}
        input [ {{ name: "IN" data_type: {data_type} dims: {dims} }} ]
        output [ {{ name: "OUT" data_type: {data_type} dims: {dims} }} ]
        "#
    ))
}

fn against(e: &ModelConfig, pre: &ModelConfig, post: &ModelConfig) -> String {
    let graph = validate_ensemble(e).expect("the ensemble is valid on its own");
    let found: Vec<&ModelConfig> =
        graph.steps.iter().map(|step| if step.model == "pre" { pre } else { post }).collect();
    match check_ensemble_steps(e, &graph, &found) {
        Ok(()) => "ok".to_owned(),
        Err(err) => err.to_string(),
    }
}

#[test]
fn a_chain_of_steps_is_valid_and_keeps_its_maps() {
    let graph = validate_ensemble(&ensemble(None)).expect("valid");
    assert_eq!(graph.models(), vec!["pre", "post"]);
    assert_eq!(graph.steps[0].inputs, vec![("IN".to_owned(), "x".to_owned())]);
    assert_eq!(graph.steps[1].outputs, vec![("OUT".to_owned(), "y".to_owned())]);
    assert_eq!(graph.steps[0].version_str(), "");
}

#[test]
fn fan_out_and_fan_in_is_a_valid_graph() {
    let e = ensemble(Some(
        r#"{ model_name: "a" input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "p" } },
           { model_name: "b" input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "q" } },
           { model_name: "c" input_map [ { key: "A" value: "p" }, { key: "B" value: "q" } ] output_map { key: "OUT" value: "y" } }"#,
    ));
    assert_eq!(message(&e), "ok");
}

#[test]
fn the_platform_and_the_scheduling_go_together() {
    let mut e = ensemble(None);
    e.platform = "onnxruntime_onnx".into();
    assert_eq!(
        message(&e),
        "model 'e': ensemble scheduling cannot be set for model 'e' whose platform is not ensemble"
    );
    let mut e = ensemble(None);
    e.scheduling_choice = None;
    assert_eq!(
        message(&e),
        "model 'e': ensemble scheduling must be set for ensemble e whose platform is ensemble"
    );
    let mut e = ensemble(None);
    e.backend = "onnxruntime".into();
    assert_eq!(
        message(&e),
        "model 'e': Ensemble model 'e' must have platform type 'ensemble' and empty backend type"
    );
}

#[test]
fn incomplete_steps_are_refused_naming_the_step() {
    let e = ensemble(Some(r#"{ model_name: "pre" output_map { key: "OUT" value: "y" } }"#));
    assert_eq!(message(&e), "model 'e': must specify 'input_map' in step 0 of ensemble 'e'");
    let e = ensemble(Some(r#"{ input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "y" } }"#));
    assert_eq!(message(&e), "model 'e': must specify 'model_name' in step 0 of ensemble 'e'");
}

#[test]
fn a_tensor_written_twice_is_refused() {
    let e = ensemble(Some(
        r#"{ model_name: "a" input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "y" } },
           { model_name: "b" input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "y" } }"#,
    ));
    assert_eq!(
        message(&e),
        "model 'e': ensemble tensor 'y' can appear in an output map only once for ensemble 'e' step 1"
    );
}

#[test]
fn unused_inputs_unwritten_outputs_and_dangling_tensors_are_refused() {
    let e = ensemble(Some(
        r#"{ model_name: "a" input_map { key: "IN" value: "z" } output_map { key: "OUT" value: "y" } }"#,
    ));
    assert_eq!(message(&e), "model 'e': ensemble input 'x' for ensemble e' is not used");
    // The output is written from a tensor nothing writes.
    let e = ensemble(Some(
        r#"{ model_name: "a" input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "p" } },
           { model_name: "b" input_map [ { key: "A" value: "p" }, { key: "B" value: "ghost" } ] output_map { key: "OUT" value: "y" } }"#,
    ));
    assert_eq!(
        message(&e),
        "model 'e': output 'y' for ensemble 'e' is not written: at least one of its depending tensors, \
         'ghost', is not connected"
    );
    // A step output nobody reads.
    let e = ensemble(Some(
        r#"{ model_name: "a" input_map { key: "IN" value: "x" } output_map [ { key: "OUT" value: "y" }, { key: "AUX" value: "spare" } ] }"#,
    ));
    assert_eq!(message(&e), "model 'e': ensemble tensor 'spare' is unused in ensemble 'e'");
}

#[test]
fn a_cycle_never_writes_its_tensors() {
    // p needs q and q needs p: neither step can ever run.
    let e = ensemble(Some(
        r#"{ model_name: "a" input_map [ { key: "IN" value: "x" }, { key: "B" value: "q" } ] output_map { key: "OUT" value: "p" } },
           { model_name: "b" input_map { key: "IN" value: "p" } output_map [ { key: "OUT" value: "q" }, { key: "Y" value: "y" } ] }"#,
    ));
    let got = message(&e);
    assert!(got.starts_with("model 'e': output 'y' for ensemble 'e' is not written"), "{got}");
    // A step that runs the ensemble itself.
    let e = ensemble(Some(
        r#"{ model_name: "e" input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "y" } }"#,
    ));
    assert_eq!(message(&e), "model 'e': circular dependency between ensembles: e -> e");
}

#[test]
fn ensembles_take_no_instances_and_bounded_steps() {
    let mut e = ensemble(None);
    e.instance_group.push(Default::default());
    assert_eq!(message(&e), "model 'e': instance group should not be specified for ensemble 'e'");
    let step =
        r#"{ model_name: "a" input_map { key: "IN" value: "x" } output_map { key: "OUT" value: "y" } }"#;
    let many = vec![step; MAX_ENSEMBLE_STEPS + 1].join(",");
    assert_eq!(
        message(&ensemble(Some(&many))),
        "model 'e': ensemble 'e' has 257 steps, over the limit of 256"
    );
}

#[test]
fn step_models_must_agree_on_datatype_and_shape() {
    let e = ensemble(None);
    let fp32 = step_model("pre", 8, "TYPE_FP32", "[ 16 ]");
    assert_eq!(against(&e, &fp32, &step_model("post", 8, "TYPE_FP32", "[ 16 ]")), "ok");
    assert_eq!(against(&e, &fp32, &step_model("post", 8, "TYPE_FP32", "[ -1 ]")), "ok");
    assert_eq!(
        against(&e, &fp32, &step_model("post", 8, "TYPE_INT32", "[ 16 ]")),
        "model 'e': in ensemble e, ensemble tensor mid: inconsistent data type: TYPE_FP32 is inferred \
         from model pre while TYPE_INT32 is inferred from model post"
    );
    assert_eq!(
        against(&e, &fp32, &step_model("post", 8, "TYPE_FP32", "[ 8 ]")),
        "model 'e': in ensemble e, ensemble tensor mid: inconsistent shape: [-1,16] is inferred from \
         model pre while [-1,8] is inferred from model post"
    );
    // A non-batching step whose full shape carries the batch dimension fits a batching one.
    assert_eq!(against(&e, &fp32, &step_model("post", 0, "TYPE_FP32", "[ -1, 16 ]")), "ok");
}

#[test]
fn step_models_must_batch_as_much_as_the_ensemble_and_map_every_input() {
    let e = ensemble(None);
    let post = step_model("post", 8, "TYPE_FP32", "[ 16 ]");
    assert_eq!(
        against(&e, &step_model("pre", 4, "TYPE_FP32", "[ 16 ]"), &post),
        "model 'e': ensemble e allows maximum batch size 8, but it contains model pre which only \
         allows maximum batch size to be 4"
    );
    let mut two_inputs = step_model("pre", 8, "TYPE_FP32", "[ 16 ]");
    let mut extra = two_inputs.input[0].clone();
    extra.name = "SCALE".into();
    two_inputs.input.push(extra);
    assert_eq!(
        against(&e, &two_inputs, &post),
        "model 'e': in ensemble e, input SCALE in model pre is not mapped to any ensemble tensors"
    );
    let mut renamed = step_model("pre", 8, "TYPE_FP32", "[ 16 ]");
    renamed.input[0].name = "INPUT0".into();
    assert_eq!(
        against(&e, &renamed, &post),
        "model 'e': in ensemble e, ensemble tensor x is mapping to non-existing input IN in model pre"
    );
    let mut renamed = step_model("pre", 8, "TYPE_FP32", "[ 16 ]");
    renamed.output[0].name = "OUTPUT0".into();
    assert_eq!(
        against(&e, &renamed, &post),
        "model 'e': in ensemble e, ensemble tensor mid is mapped from non-existing output OUT in model pre"
    );
}
