//! `tern infer NAME --input NAME=FILE.npy|JSON ...`: one inference with inputs from .npy files
//! (datatype and shape from the file) or JSON (a nested array or {"shape", "data"}, the
//! datatype from the model's metadata); outputs printed (datatype, shape, values, truncated)
//! or saved as NAME.npy.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bytes::Bytes;
use half::{bf16, f16};
use npyz::{DType, TypeChar, WriterBuilder};
use serde_json::{Value, json};
use tern_client::{DataType, InferRequest, InputTensor, OutputTensor};

use crate::remote::{ConnectArgs, Failure, run};

// `tern infer` (a plain comment: a doc comment would replace the command's about).
#[derive(Debug, clap::Args)]
pub struct InferArgs {
    /// The model.
    name: String,
    /// An input: NAME=FILE.npy, NAME=FILE.json, or NAME=JSON ('[[1, 2]]' or
    /// '{"shape": [1, 2], "data": [1, 2]}'); repeat for each input.
    #[arg(short, long = "input", value_name = "NAME=FILE.npy|JSON", required = true, value_parser = parse_input)]
    inputs: Vec<(String, String)>,
    /// Ask for these outputs only (all outputs when left out).
    #[arg(long = "output", value_name = "NAME")]
    outputs: Vec<String>,
    /// The model version (the one the version policy serves when left out).
    #[arg(long, default_value = "")]
    model_version: String,
    /// Save each output as DIR/NAME.npy ('/' in a name becomes '_') instead of printing it.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Print every output in full as one JSON object {NAME: {datatype, shape, data}}.
    #[arg(long)]
    json: bool,
    /// How many values of each output to print.
    #[arg(long, default_value_t = 16, value_name = "N")]
    max_values: usize,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn parse_input(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err("expected NAME=FILE.npy or NAME=JSON".into()),
    }
}

/// An input as read from the command line, before the model's metadata is known.
enum Source {
    Tensor(InputTensor),
    Json(Value),
}

fn read_source(name: &str, value: &str) -> Result<Source, Failure> {
    let bad = |what: String| Failure::usage(format!("--input {name}: {what}"));
    if value.ends_with(".npy") {
        return read_npy(name, Path::new(value)).map(Source::Tensor).map_err(bad);
    }
    let text = if value.ends_with(".json") {
        std::fs::read_to_string(value).map_err(|e| bad(format!("{value}: {e}")))?
    } else {
        value.to_owned()
    };
    serde_json::from_str(&text)
        .map(Source::Json)
        .map_err(|e| bad(format!("not a .npy file nor valid JSON: {e}")))
}

pub fn infer(args: InferArgs) -> ExitCode {
    // Files and JSON are read before connecting: a typo is a usage error whatever the server.
    let sources: Result<Vec<(String, Source)>, Failure> =
        args.inputs.iter().map(|(name, value)| Ok((name.clone(), read_source(name, value)?))).collect();
    let sources = match sources {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(crate::remote::EXIT_USAGE);
        }
    };
    run(&args.connect, |client| async move {
        let needs_metadata = sources.iter().any(|(_, s)| matches!(s, Source::Json(_)));
        let declared: HashMap<String, DataType> = if needs_metadata {
            let metadata = client.model_metadata(&args.name, &args.model_version).await?;
            metadata
                .inputs
                .iter()
                .filter_map(|t| Some((t.name.clone(), DataType::from_wire_name(&t.datatype)?)))
                .collect()
        } else {
            HashMap::new()
        };
        let mut request = InferRequest::new(&args.name).version(&args.model_version);
        for (name, source) in sources {
            let tensor = match source {
                Source::Tensor(t) => t,
                Source::Json(json) => {
                    // An input the model does not declare is still sent (with the datatype
                    // its values suggest): the server's answer names it.
                    let datatype =
                        declared.get(&name).copied().unwrap_or_else(|| tern_client::json_datatype(&json));
                    InputTensor::from_json(&name, datatype, &json)?
                }
            };
            request = request.input(tensor);
        }
        for output in &args.outputs {
            request = request.output(output);
        }
        let result = client.infer(request).await?;
        if let Some(dir) = &args.output_dir {
            std::fs::create_dir_all(dir).map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
            for output in &result.outputs {
                let path = dir.join(format!("{}.npy", file_name(output.name())));
                write_npy(&path, output).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?;
                println!(
                    "{} {} {} -> {}",
                    output.name(),
                    output.datatype(),
                    shape_text(output.shape()),
                    path.display()
                );
            }
        } else if args.json {
            let outputs: serde_json::Map<String, Value> = result
                .outputs
                .iter()
                .map(|o| {
                    let data = values(o, usize::MAX)?;
                    Ok((
                        o.name().to_owned(),
                        json!({"datatype": o.datatype().wire_name(), "shape": o.shape(), "data": data}),
                    ))
                })
                .collect::<Result<_, Failure>>()?;
            println!("{}", Value::Object(outputs));
        } else {
            for o in &result.outputs {
                let shown = values(o, args.max_values)?;
                let more = o.len().saturating_sub(args.max_values);
                let tail = if more > 0 { format!(" ... ({more} more)") } else { String::new() };
                let shown: Vec<String> = shown.iter().map(Value::to_string).collect();
                println!(
                    "{} {} {}: [{}]{tail}",
                    o.name(),
                    o.datatype(),
                    shape_text(o.shape()),
                    shown.join(", ")
                );
            }
        }
        Ok(())
    })
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// A file name from an output name (`gpu_0/softmax_1` -> `gpu_0_softmax_1`).
fn file_name(name: &str) -> String {
    let cleaned: String =
        name.chars().map(|c| if c == '/' || c == '\\' || c == '\0' { '_' } else { c }).collect();
    if cleaned.is_empty() || cleaned.starts_with('.') { format!("_{cleaned}") } else { cleaned }
}

/// The first `limit` values of an output as JSON values (BYTES as text, lossily).
fn values(o: &OutputTensor, limit: usize) -> Result<Vec<Value>, Failure> {
    fn take<T: tern_client::Element>(
        o: &OutputTensor,
        limit: usize,
        f: impl Fn(T) -> Value,
    ) -> Result<Vec<Value>, Failure> {
        Ok(o.to_vec::<T>()?.into_iter().take(limit).map(f).collect())
    }
    // NaN and infinities have no JSON number: printed as strings, as numpy spells them.
    let float =
        |v: f64| serde_json::Number::from_f64(v).map_or_else(|| Value::String(format!("{v}")), Value::Number);
    match o.datatype() {
        DataType::Bool => take(o, limit, Value::Bool),
        DataType::Uint8 => take(o, limit, |v: u8| json!(v)),
        DataType::Uint16 => take(o, limit, |v: u16| json!(v)),
        DataType::Uint32 => take(o, limit, |v: u32| json!(v)),
        DataType::Uint64 => take(o, limit, |v: u64| json!(v)),
        DataType::Int8 => take(o, limit, |v: i8| json!(v)),
        DataType::Int16 => take(o, limit, |v: i16| json!(v)),
        DataType::Int32 => take(o, limit, |v: i32| json!(v)),
        DataType::Int64 => take(o, limit, |v: i64| json!(v)),
        DataType::Fp16 => take(o, limit, |v: f16| float(v.to_f64())),
        DataType::Bf16 => take(o, limit, |v: bf16| float(v.to_f64())),
        // Through its shortest decimal form, so 0.1f32 prints as 0.1, not 0.10000000149.
        DataType::Fp32 => take(o, limit, |v: f32| float(v.to_string().parse().unwrap_or(f64::from(v)))),
        DataType::Fp64 => take(o, limit, float),
        DataType::Bytes => Ok(o
            .to_bytes()?
            .iter()
            .take(limit)
            .map(|b| Value::String(String::from_utf8_lossy(b).into_owned()))
            .collect()),
    }
}

// === .npy =====================================================================================

/// An input from a .npy file: its datatype from the file's dtype, its shape from the file.
fn read_npy(name: &str, path: &Path) -> Result<InputTensor, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .map_err(|e| format!("{}: not a .npy file: {e}", path.display()))?;
    if npy.order() == npyz::Order::Fortran {
        return Err(format!(
            "{}: Fortran-ordered arrays are not supported (save np.ascontiguousarray(a))",
            path.display()
        ));
    }
    let shape: Vec<i64> = npy.shape().iter().map(|&d| d as i64).collect();
    let DType::Plain(type_str) = npy.dtype() else {
        return Err(format!("{}: structured arrays are not supported", path.display()));
    };
    // The header's shape must fit in the file before anything is allocated for it.
    let fits = type_str
        .num_bytes()
        .and_then(|size| npy.shape().iter().try_fold(size as u64, |n, &d| n.checked_mul(d)))
        .is_some_and(|n| n <= file_len);
    if !fits {
        return Err(format!(
            "{}: the header's shape {:?} does not fit in the file",
            path.display(),
            npy.shape()
        ));
    }
    let unsupported = || {
        format!(
            "{}: dtype '{type_str}' has no KServe datatype (bool, int/uint 8-64, float 16/32/64, bytes 'S' or str 'U')",
            path.display()
        )
    };
    let read = |e: std::io::Error| format!("{}: {e}", path.display());
    let tensor = match (type_str.type_char(), type_str.size_field()) {
        (TypeChar::Bool, 1) => InputTensor::new(name, &shape, &npy.into_vec::<bool>().map_err(read)?),
        (TypeChar::Uint, 1) => InputTensor::new(name, &shape, &npy.into_vec::<u8>().map_err(read)?),
        (TypeChar::Uint, 2) => InputTensor::new(name, &shape, &npy.into_vec::<u16>().map_err(read)?),
        (TypeChar::Uint, 4) => InputTensor::new(name, &shape, &npy.into_vec::<u32>().map_err(read)?),
        (TypeChar::Uint, 8) => InputTensor::new(name, &shape, &npy.into_vec::<u64>().map_err(read)?),
        (TypeChar::Int, 1) => InputTensor::new(name, &shape, &npy.into_vec::<i8>().map_err(read)?),
        (TypeChar::Int, 2) => InputTensor::new(name, &shape, &npy.into_vec::<i16>().map_err(read)?),
        (TypeChar::Int, 4) => InputTensor::new(name, &shape, &npy.into_vec::<i32>().map_err(read)?),
        (TypeChar::Int, 8) => InputTensor::new(name, &shape, &npy.into_vec::<i64>().map_err(read)?),
        (TypeChar::Float, 2) => InputTensor::new(name, &shape, &npy.into_vec::<f16>().map_err(read)?),
        (TypeChar::Float, 4) => InputTensor::new(name, &shape, &npy.into_vec::<f32>().map_err(read)?),
        (TypeChar::Float, 8) => InputTensor::new(name, &shape, &npy.into_vec::<f64>().map_err(read)?),
        (TypeChar::ByteStr, _) => InputTensor::bytes(name, &shape, &npy.into_vec::<Vec<u8>>().map_err(read)?),
        (TypeChar::UnicodeStr, _) => {
            InputTensor::bytes(name, &shape, &npy.into_vec::<String>().map_err(read)?)
        }
        _ => return Err(unsupported()),
    };
    tensor.map_err(|e| e.to_string())
}

/// Saves an output as .npy: numeric types as themselves (BF16, which numpy lacks, widened to
/// float32 without loss), BYTES as fixed-width bytes ('S', NUL-padded as numpy stores them).
fn write_npy(path: &Path, o: &OutputTensor) -> Result<(), String> {
    let shape: Vec<u64> = o.shape().iter().map(|&d| d as u64).collect();
    let mut out = BufWriter::new(std::fs::File::create(path).map_err(|e| e.to_string())?);
    fn write<T: npyz::AutoSerialize + tern_client::Element>(
        out: &mut impl Write,
        shape: &[u64],
        values: Vec<T>,
    ) -> std::io::Result<()> {
        let mut writer = npyz::WriteOptions::new().default_dtype().shape(shape).writer(out).begin_nd()?;
        writer.extend(values)?;
        writer.finish()
    }
    let e = |e: tern_client::ClientError| e.to_string();
    let io = |e: std::io::Error| e.to_string();
    match o.datatype() {
        DataType::Bool => write(&mut out, &shape, o.to_vec::<bool>().map_err(e)?).map_err(io)?,
        DataType::Uint8 => write(&mut out, &shape, o.to_vec::<u8>().map_err(e)?).map_err(io)?,
        DataType::Uint16 => write(&mut out, &shape, o.to_vec::<u16>().map_err(e)?).map_err(io)?,
        DataType::Uint32 => write(&mut out, &shape, o.to_vec::<u32>().map_err(e)?).map_err(io)?,
        DataType::Uint64 => write(&mut out, &shape, o.to_vec::<u64>().map_err(e)?).map_err(io)?,
        DataType::Int8 => write(&mut out, &shape, o.to_vec::<i8>().map_err(e)?).map_err(io)?,
        DataType::Int16 => write(&mut out, &shape, o.to_vec::<i16>().map_err(e)?).map_err(io)?,
        DataType::Int32 => write(&mut out, &shape, o.to_vec::<i32>().map_err(e)?).map_err(io)?,
        DataType::Int64 => write(&mut out, &shape, o.to_vec::<i64>().map_err(e)?).map_err(io)?,
        DataType::Fp16 => write(&mut out, &shape, o.to_vec::<f16>().map_err(e)?).map_err(io)?,
        DataType::Bf16 => {
            let widened: Vec<f32> = o.to_vec::<bf16>().map_err(e)?.into_iter().map(f32::from).collect();
            write(&mut out, &shape, widened).map_err(io)?
        }
        DataType::Fp32 => write(&mut out, &shape, o.to_vec::<f32>().map_err(e)?).map_err(io)?,
        DataType::Fp64 => write(&mut out, &shape, o.to_vec::<f64>().map_err(e)?).map_err(io)?,
        DataType::Bytes => {
            let elements: Vec<Bytes> = o.to_bytes().map_err(e)?;
            let width = elements.iter().map(Bytes::len).max().unwrap_or(0).max(1);
            let dtype: npyz::TypeStr = format!("|S{width}").parse().map_err(|e| format!("{e}"))?;
            let mut writer = npyz::WriteOptions::<[u8]>::new()
                .dtype(DType::Plain(dtype))
                .shape(&shape)
                .writer(&mut out)
                .begin_nd()
                .map_err(io)?;
            for element in &elements {
                writer.push(element.as_ref()).map_err(io)?;
            }
            writer.finish().map_err(io)?
        }
    }
    out.flush().map_err(io)
}
