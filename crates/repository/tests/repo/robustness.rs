//! Bounded randomized robustness ("fuzz-style", on stable Rust) of what a model directory or a
//! load request may hold: random and mutated config.pbtxt text through the parser, then
//! auto-complete, validation and the version policy; mutated JSON configs through the load
//! API's parser. Nothing in a file may panic. Seeds are tests/fuzz-corpus/config/*.pbtxt; the
//! generator is seeded. `TERN_FUZZ_ITERATIONS` (default 20000, a quarter for JSON) sets how many.

use std::path::PathBuf;

use tern_core::{DataType, ModelSignature, TensorSpec};
use tern_repository::{
    ModelSource, auto_complete, check_file_names, config_override_from_json, parse_config, select_versions,
    validate,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Tokens of the text format and values at the edges.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "#",
    "\n",
    " ",
    "-1",
    "0",
    "-",
    "1e309",
    "nan",
    "inf",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "0x7fffffff",
    "dims",
    "input",
    "output",
    "name",
    "max_batch_size",
    "reshape",
    "shape",
    "data_type",
    "TYPE_STRING",
    "TYPE_FP32",
    "TYPE_INVALID",
    "dynamic_batching",
    "preferred_batch_size",
    "version_policy",
    "specific",
    "versions",
    "latest",
    "num_versions",
    "all",
    "instance_group",
    "count",
    "kind",
    "KIND_GPU",
    "gpus",
    "\"../x\"",
    "model_warmup",
    "input_data_file",
    "label_filename",
    "default_model_filename",
    "\u{feff}",
    "\u{0}",
    "é",
    "parameters",
    "key",
    "value",
    "string_value",
    "priority_levels",
    "optimization",
    "level",
];

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "-2",
    "4",
    "8",
    "64",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "1.5",
    "1e40",
];
const STRINGS: &[&str] =
    &["", "INPUT0", "OUTPUT0", "input", "output", "../x", "a/b", "labels.txt", "\\x00", "é"];
const ENUMS: &[&str] = &[
    "TYPE_FP32",
    "TYPE_STRING",
    "TYPE_BOOL",
    "TYPE_FP16",
    "TYPE_BF16",
    "TYPE_INT64",
    "TYPE_INVALID",
    "KIND_CPU",
    "KIND_GPU",
    "KIND_AUTO",
    "KIND_MODEL",
    "REJECT",
    "DELAY",
    "FORMAT_NCHW",
];

/// A random position of a run of characters that `pick` accepts (a number, an identifier).
fn random_run(rng: &mut Rng, chars: &[char], pick: impl Fn(char) -> bool) -> Option<(usize, usize)> {
    let starts: Vec<usize> =
        (0..chars.len()).filter(|&i| pick(chars[i]) && (i == 0 || !pick(chars[i - 1]))).collect();
    let start = *starts.get(rng.below(starts.len()))?;
    let end = (start..chars.len()).find(|&i| !pick(chars[i])).unwrap_or(chars.len());
    Some((start, end))
}

/// Mostly structure-keeping edits (numbers, strings, enum values, whole lines), so the text
/// still parses often enough to reach auto-complete and validation; sometimes raw damage.
fn mutate_text(rng: &mut Rng, seed: &str, seeds: &[String]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for _ in 0..=rng.below(2) {
        let at = rng.below(chars.len() + 1);
        match rng.below(10) {
            0..=2 => {
                if let Some((a, b)) = random_run(rng, &chars, |c| c.is_ascii_digit() || c == '-') {
                    chars.splice(a..b, NUMBERS[rng.below(NUMBERS.len())].chars());
                }
            }
            3 => {
                if let Some((a, b)) = random_run(rng, &chars, |c| c != '"') {
                    let quoted = a > 0 && chars[a - 1] == '"' && b < chars.len();
                    if quoted {
                        chars.splice(a..b, STRINGS[rng.below(STRINGS.len())].chars());
                    }
                }
            }
            4 => {
                if let Some((a, b)) = random_run(rng, &chars, |c| c.is_ascii_uppercase() || c == '_') {
                    chars.splice(a..b, ENUMS[rng.below(ENUMS.len())].chars());
                }
            }
            5 | 6 => {
                // Delete or duplicate one line.
                let lines: Vec<usize> = (0..chars.len()).filter(|&i| chars[i] == '\n').collect();
                if lines.len() > 1 {
                    let i = rng.below(lines.len() - 1);
                    let (a, b) = (lines[i] + 1, lines[i + 1] + 1);
                    if rng.below(2) == 0 {
                        chars.drain(a..b);
                    } else {
                        let line: Vec<char> = chars[a..b].to_vec();
                        chars.splice(b..b, line);
                    }
                }
            }
            7 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                chars.splice(at..at, token.chars());
            }
            8 => {
                let other: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(120)).min(other.len());
                chars.splice(at..at, other[from..to].iter().copied());
            }
            _ if rng.below(2) == 0 => chars.truncate(at),
            _ if at < chars.len() => {
                let end = (at + 1 + rng.below(24)).min(chars.len());
                chars.drain(at..end);
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

fn seeds() -> Vec<String> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fuzz-corpus/config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let seeds: Vec<String> = files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn iterations() -> usize {
    std::env::var("TERN_FUZZ_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

fn signatures() -> Vec<ModelSignature> {
    let spec = |name: &str, datatype, dims: &[i64]| TensorSpec {
        name: name.into(),
        datatype,
        dims: dims.to_vec(),
        utf8: false,
    };
    vec![
        ModelSignature {
            inputs: vec![
                spec("INPUT0", DataType::Fp32, &[-1, 16]),
                spec("INPUT1", DataType::Fp32, &[-1, 16]),
            ],
            outputs: vec![spec("OUTPUT0", DataType::Fp32, &[-1, 16])],
        },
        ModelSignature {
            inputs: vec![spec("input", DataType::Fp32, &[-1, 3, 224, 224])],
            outputs: vec![spec("output", DataType::Fp32, &[-1, 1000])],
        },
        ModelSignature {
            inputs: vec![spec("TEXT", DataType::Bytes, &[-1])],
            outputs: vec![spec("TEXT", DataType::Bytes, &[2, -1])],
        },
    ]
}

/// Everything a load does with a parsed config, minus ONNX Runtime.
fn exercise(config: tern_repository::ModelConfig, signatures: &[ModelSignature]) -> bool {
    let name = if config.name.is_empty() { "m".to_owned() } else { config.name.clone() };
    let _ = check_file_names(&name, &config);
    let source = ModelSource {
        name: name.clone(),
        dir: std::env::temp_dir().join("tern-robustness-no-such-dir"),
        config: Some(config.clone()),
        versions: vec![1, 2, 3],
    };
    let versions = select_versions(&source, &config);
    assert!(versions.iter().all(|v| source.versions.contains(v)));
    let mut completed = false;
    for signature in signatures {
        let _ = validate(&config, signature);
        for strict in [false, true] {
            if let Ok(full) = auto_complete(&name, Some(config.clone()), signature, strict) {
                completed |= validate(&full, signature).is_ok();
            }
        }
    }
    completed
}

#[test]
fn random_and_mutated_config_pbtxt_never_panics() {
    let seeds = seeds();
    let signatures = signatures();
    for seed in &seeds {
        let config = parse_config(seed).unwrap_or_else(|e| panic!("seed does not parse: {e}"));
        exercise(config, &signatures);
    }
    let mut rng = Rng(0x7e57_5eed_0000_0003);
    let (mut parsed, mut completed) = (0usize, 0usize);
    let n = iterations();
    for i in 0..n {
        let text = if i % 20 == 0 {
            (0..rng.below(200)).map(|_| char::from(rng.next() as u8)).collect()
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutate_text(&mut rng, seed, &seeds)
        };
        if let Ok(config) = parse_config(&text) {
            parsed += 1;
            completed += usize::from(exercise(config, &signatures));
        }
    }
    eprintln!("{n} texts: {parsed} parsed, {completed} completed and valid for some model");
    assert!(parsed > n / 10 && completed > n / 100, "mutations must reach past the parser");
}

#[test]
fn mutated_json_configs_never_panic() {
    // The seeds as JSON, as the load API's `config` parameter carries them.
    let seeds: Vec<String> = seeds()
        .iter()
        .filter_map(|text| parse_config(text).ok())
        .map(|config| {
            let mut json = String::from("{");
            json.push_str(&format!(
                "\"name\": {:?}, \"max_batch_size\": {}",
                config.name, config.max_batch_size
            ));
            for (i, input) in config.input.iter().enumerate() {
                let sep = if i == 0 { ", \"input\": [" } else { ", " };
                json.push_str(&format!(
                    "{sep}{{\"name\": {:?}, \"data_type\": \"TYPE_FP32\", \"dims\": {:?}}}",
                    input.name, input.dims
                ));
            }
            if !config.input.is_empty() {
                json.push(']');
            }
            json.push_str(", \"version_policy\": {\"specific\": {\"versions\": [1, 2]}}}");
            json
        })
        .collect();
    let signatures = signatures();
    let mut rng = Rng(0x7e57_5eed_0000_0004);
    let mut parsed = 0usize;
    for seed in &seeds {
        assert!(config_override_from_json(seed).is_ok(), "seed {seed} parses");
    }
    let n = iterations() / 4;
    for _ in 0..n {
        let seed = &seeds[rng.below(seeds.len())];
        let text = mutate_text(&mut rng, seed, &seeds);
        if let Ok(config) = config_override_from_json(&text) {
            parsed += 1;
            exercise(config, &signatures);
        }
    }
    eprintln!("{n} JSON texts: {parsed} parsed");
    assert!(parsed > 0);
}
