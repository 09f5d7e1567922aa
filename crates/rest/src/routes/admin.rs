//! Repository control parameters, trace settings and log settings.

use std::collections::HashMap;

use axum::body::Body;
use axum::response::Response;
use base64::Engine;
use http::{HeaderMap, Method};
use serde_json::{Map, Value};
use tern_proto::inference as pb;

use super::{Service, Shared, call, json, read_json_object, want};
use crate::error::RestError;

/// A load or unload body's `parameters`: `config` (JSON text), `file:<path>` (base64 content,
/// as Triton's HTTP), and plain values.
pub(super) fn repository_parameters(
    model: &str,
    options: &Map<String, Value>,
) -> Result<HashMap<String, pb::ModelRepositoryParameter>, RestError> {
    use pb::model_repository_parameter::ParameterChoice as C;
    let mut out = HashMap::new();
    let Some(params) = options.get("parameters") else { return Ok(out) };
    let params = params.as_object().ok_or_else(|| {
        RestError::bad_request(format!("model '{model}': 'parameters' must be a JSON object"))
    })?;
    for (key, value) in params {
        let bad =
            |want: &str| RestError::bad_request(format!("model '{model}': Unable to parse '{key}': {want}"));
        let choice = if key.starts_with("file:") {
            let text = value.as_str().ok_or_else(|| bad("want base64 file content"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| bad(&format!("not base64 ({e})")))?;
            C::BytesParam(bytes)
        } else {
            match value {
                Value::String(s) => C::StringParam(s.clone()),
                Value::Bool(b) => C::BoolParam(*b),
                Value::Number(n) => C::Int64Param(n.as_i64().ok_or_else(|| bad("want an integer"))?),
                // Triton accepts `config` as a JSON object too; the gRPC side takes its text.
                Value::Object(_) if key == "config" => C::StringParam(value.to_string()),
                _ => return Err(bad("want a string, boolean or integer")),
            }
        };
        out.insert(key.clone(), pb::ModelRepositoryParameter { parameter_choice: Some(choice) });
    }
    Ok(out)
}

pub(super) async fn trace_setting<T: Service>(
    s: &Shared<T>,
    method: &Method,
    headers: &HeaderMap,
    model: &str,
    body: Body,
) -> Result<Response, RestError> {
    use pb::trace_setting_request::SettingValue;
    let mut settings = HashMap::new();
    if method == Method::POST {
        for (key, value) in read_json_object(headers, body, s.max_body).await? {
            let bad = || {
                RestError::bad_request(format!("Unable to parse '{key}': want a string or a list of strings"))
            };
            let values = match value {
                Value::Null => Vec::new(),
                Value::String(v) => vec![v],
                Value::Array(items) => items
                    .into_iter()
                    .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
                    .collect::<Result<_, _>>()?,
                _ => return Err(bad()),
            };
            settings.insert(key, SettingValue { value: values });
        }
    } else {
        want(method, &Method::GET)?;
    }
    let request = pb::TraceSettingRequest { settings, model_name: model.to_string() };
    let r = call(s, "TraceSetting", headers, request, |svc, req| async move { svc.trace_setting(req).await })
        .await?;
    let out: Map<String, Value> = r
        .settings
        .into_iter()
        .map(|(k, v)| {
            // Triton's HandleTrace: trace_level is an array, the rest strings.
            let value = match v.value.as_slice() {
                [one] if k != "trace_level" => Value::String(one.clone()),
                many => Value::from(many.to_vec()),
            };
            (k, value)
        })
        .collect();
    json(Value::Object(out))
}

pub(super) async fn log_settings<T: Service>(
    s: &Shared<T>,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, RestError> {
    use pb::log_settings_request::{SettingValue, setting_value::ParameterChoice as C};
    let mut settings = HashMap::new();
    if method == Method::POST {
        for (key, value) in read_json_object(headers, body, s.max_body).await? {
            let choice = match value {
                Value::Bool(b) => C::BoolParam(b),
                Value::String(v) => C::StringParam(v),
                Value::Number(n) => {
                    C::Uint32Param(n.as_u64().and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                        RestError::bad_request(format!(
                            "Unable to parse '{key}': want an unsigned 32-bit integer"
                        ))
                    })?)
                }
                _ => {
                    return Err(RestError::bad_request(format!(
                        "Unable to parse '{key}': want a bool, integer or string"
                    )));
                }
            };
            settings.insert(key, SettingValue { parameter_choice: Some(choice) });
        }
    } else {
        want(method, &Method::GET)?;
    }
    let request = pb::LogSettingsRequest { settings };
    let r = call(s, "LogSettings", headers, request, |svc, req| async move { svc.log_settings(req).await })
        .await?;
    use pb::log_settings_response::setting_value::ParameterChoice as R;
    let out: Map<String, Value> = r
        .settings
        .into_iter()
        .map(|(k, v)| {
            let value = match v.parameter_choice {
                Some(R::BoolParam(b)) => Value::Bool(b),
                Some(R::Uint32Param(n)) => Value::from(n),
                Some(R::StringParam(s)) => Value::String(s),
                None => Value::Null,
            };
            (k, value)
        })
        .collect();
    json(Value::Object(out))
}
