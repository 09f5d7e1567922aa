//! Tokens to text: the tokenizer files, incremental detokenization and stop strings.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::GenError;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// Bound on tokenizer_config.json (a chat template is a few KiB; some carry a vocabulary).
const MAX_TOKENIZER_CONFIG_BYTES: u64 = 64 << 20;

/// `tokenizer.json` plus what `tokenizer_config.json` says about BOS and the chat template.
pub struct TextCodec {
    tokenizer: Tokenizer,
    /// tokenizer_config.json `add_bos_token` (None: leave it to tokenizer.json's post-processor).
    add_bos: Option<bool>,
    bos_id: Option<u32>,
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl TextCodec {
    pub fn load(dir: &Path, config_bos: Option<u32>) -> Result<TextCodec, GenError> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(GenError::Internal(format!("missing {}", path.display())));
        }
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| GenError::Internal(format!("cannot load {}: {e}", path.display())))?;
        let mut codec = TextCodec {
            tokenizer,
            add_bos: None,
            bos_id: config_bos,
            chat_template: None,
            bos_token: None,
            eos_token: None,
        };

        let path = dir.join(TOKENIZER_CONFIG_FILE);
        if path.is_file() {
            let too_big =
                std::fs::metadata(&path).map(|m| m.len() > MAX_TOKENIZER_CONFIG_BYTES).unwrap_or(false);
            if too_big {
                return Err(GenError::Internal(format!(
                    "{} is larger than {MAX_TOKENIZER_CONFIG_BYTES} bytes",
                    path.display()
                )));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| GenError::Internal(format!("cannot read {}: {e}", path.display())))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| GenError::Internal(format!("{} is not valid JSON: {e}", path.display())))?;
            codec
                .read_tokenizer_config(&json)
                .map_err(|e| GenError::Internal(format!("{}: {e}", path.display())))?;
        }
        if codec.bos_id.is_none()
            && let Some(bos) = &codec.bos_token
        {
            codec.bos_id = codec.tokenizer.token_to_id(bos);
        }
        Ok(codec)
    }

    fn read_tokenizer_config(&mut self, json: &serde_json::Value) -> Result<(), String> {
        // A token is a string or an AddedToken object with `content`.
        let token = |field: &str| -> Result<Option<String>, String> {
            match json.get(field) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
                Some(v) => match v.get("content").and_then(|c| c.as_str()) {
                    Some(s) => Ok(Some(s.to_string())),
                    None => Err(format!("'{field}' must be a string or an object with 'content'")),
                },
            }
        };
        self.bos_token = token("bos_token")?;
        self.eos_token = token("eos_token")?;
        self.add_bos = match json.get("add_bos_token") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Bool(b)) => Some(*b),
            Some(_) => return Err("'add_bos_token' must be true or false".into()),
        };
        // A string, or (newer Hugging Face files) a list of {name, template}: take "default".
        self.chat_template = match json.get("chat_template") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(str::to_string),
            Some(_) => return Err("'chat_template' must be a string or a list of {name, template}".into()),
        };
        if let Some(bos) = &self.bos_token
            && let Some(id) = self.tokenizer.token_to_id(bos)
        {
            self.bos_id = Some(id);
        }
        Ok(())
    }

    /// Token ids of a prompt: tokenizer.json's special-token rules, then `add_bos_token`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, GenError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| GenError::InvalidArgument(format!("cannot tokenize the prompt: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if self.add_bos == Some(true)
            && let Some(bos) = self.bos_id
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// Text of `ids` with special tokens left out (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// Incremental detokenization over a sliding window of tokens: the text a new token adds is
/// the window's text minus the text of the window without it. A token that ends inside a
/// UTF-8 character (byte-level BPE) decodes to U+FFFD at the end: nothing is emitted until a
/// later token completes the character. The window starts inside the prompt so that decoders
/// which strip a leading space at the start of a text do not strip it from the output.
pub struct Detokenizer {
    prefix_offset: usize,
    read_offset: usize,
}

/// Tokens of context kept before the unread ones.
const DETOKENIZER_CONTEXT: usize = 5;

impl Detokenizer {
    pub fn new(prompt_len: usize) -> Detokenizer {
        Detokenizer { prefix_offset: prompt_len.saturating_sub(DETOKENIZER_CONTEXT), read_offset: prompt_len }
    }

    /// The text the last token of `tokens` (prompt and generated so far) adds.
    pub fn next(&mut self, codec: &TextCodec, tokens: &[u32]) -> String {
        let prefix = codec.decode(&tokens[self.prefix_offset..self.read_offset]);
        let text = codec.decode(&tokens[self.prefix_offset..]);
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') && text.starts_with(&prefix) {
            let added = text[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = tokens.len();
            added
        } else {
            String::new()
        }
    }

    /// Whatever text the unread tokens hold, complete or not (at the end of a sequence).
    pub fn flush(&mut self, codec: &TextCodec, tokens: &[u32]) -> String {
        if self.read_offset >= tokens.len() {
            return String::new();
        }
        let prefix = codec.decode(&tokens[self.prefix_offset..self.read_offset]);
        let text = codec.decode(&tokens[self.prefix_offset..]);
        self.prefix_offset = self.read_offset;
        self.read_offset = tokens.len();
        match text.strip_prefix(&prefix) {
            Some(added) => added.to_string(),
            None => String::new(),
        }
    }
}

/// Holds text back while it may still be the start of a stop string, and cuts the output
/// before the first stop string, wherever token boundaries fall.
pub struct StopGate {
    stops: Vec<String>,
    pending: String,
}

impl StopGate {
    pub fn new(stops: Vec<String>) -> StopGate {
        StopGate { stops, pending: String::new() }
    }

    /// Adds text; returns what may be emitted now and whether a stop string was found (then
    /// the returned text is everything before it and the gate is spent).
    pub fn push(&mut self, chunk: &str) -> (String, bool) {
        if self.stops.is_empty() {
            return (chunk.to_string(), false);
        }
        self.pending.push_str(chunk);
        let first = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min();
        if let Some(at) = first {
            let out = self.pending[..at].to_string();
            self.pending.clear();
            return (out, true);
        }
        // The longest end of `pending` that begins some stop string stays back.
        let mut hold = 0;
        for stop in &self.stops {
            for k in (1..stop.len()).rev() {
                if k <= hold {
                    break;
                }
                if stop.is_char_boundary(k) && self.pending.ends_with(&stop[..k]) {
                    hold = k;
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, false)
    }

    /// The held-back text, at the end of a sequence that did not stop on a string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], chunks: &[&str]) -> (Vec<String>, bool) {
        let mut gate = StopGate::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for c in chunks {
            let (text, stopped) = gate.push(c);
            out.push(text);
            if stopped {
                return (out, true);
            }
        }
        out.push(gate.flush());
        (out, false)
    }

    #[test]
    fn stop_string_across_chunks_is_cut() {
        let (out, stopped) = run(&["END"], &["abc E", "N", "Dxyz"]);
        assert!(stopped);
        assert_eq!(out, vec!["abc ", "", ""]);
        assert_eq!(out.concat(), "abc ");
    }

    #[test]
    fn false_start_is_released() {
        let (out, stopped) = run(&["END"], &["abc E", "Nx", "y"]);
        assert!(!stopped);
        assert_eq!(out.concat(), "abc ENxy");
        assert_eq!(out[0], "abc ");
    }

    /// The example model's tokenizer (byte-level BPE), from `$TERN_EXAMPLES_REPO/tiny_llm/1`.
    fn example_codec() -> TextCodec {
        let repo = std::env::var_os("TERN_EXAMPLES_REPO").unwrap_or_else(|| {
            panic!("TERN_EXAMPLES_REPO is not set: run `make examples` and `make test-rust` (tiny_llm/1)")
        });
        let dir = std::path::PathBuf::from(repo).join("tiny_llm/1");
        match TextCodec::load(&dir, None) {
            Ok(c) => c,
            Err(e) => panic!("{e} (run `make examples`)"),
        }
    }

    #[test]
    fn incremental_text_waits_for_whole_characters() {
        let codec = example_codec();
        // Byte-level BPE: each byte has a token, so a character can be split across tokens.
        let bytes = |s: &str| -> Vec<u32> {
            s.bytes()
                .map(|b| {
                    // GPT-2's byte-to-character table: printable bytes map to themselves (as chars),
                    // the rest to U+0100 onwards.
                    let printable = (b'!'..=b'~').contains(&b)
                        || (0xA1..=0xAC).contains(&b)
                        || (0xAE..=0xFF).contains(&b);
                    let c = if printable {
                        char::from(b)
                    } else {
                        let others = (0u16..=255)
                            .filter(|&x| {
                                let x = x as u8;
                                !((b'!'..=b'~').contains(&x)
                                    || (0xA1..=0xAC).contains(&x)
                                    || (0xAE..=0xFF).contains(&x))
                            })
                            .position(|x| x == b as u16)
                            .expect("a byte");
                        char::from_u32(256 + others as u32).expect("a char")
                    };
                    codec
                        .tokenizer
                        .token_to_id(&c.to_string())
                        .unwrap_or_else(|| panic!("no token for byte {b:#x}"))
                })
                .collect()
        };
        let prompt = codec.encode("Say:").expect("encodes");
        let generated: Vec<u32> =
            [bytes("é"), bytes("日本"), codec.encode("ok ✓").expect("encodes")[1..].to_vec(), bytes("€!")]
                .concat();
        let mut tokens = prompt.clone();
        let mut detok = Detokenizer::new(prompt.len());
        let mut pieces = Vec::new();
        for &t in &generated {
            tokens.push(t);
            let piece = detok.next(&codec, &tokens);
            assert!(!piece.contains('\u{FFFD}'), "a partial character leaked: {piece:?}");
            pieces.push(piece);
        }
        pieces.push(detok.flush(&codec, &tokens));
        assert_eq!(pieces[0], "", "the first byte of é is not text yet");
        assert_eq!(pieces[1], "é");
        assert_eq!(pieces.concat(), codec.decode(&generated));
        assert_eq!(pieces.concat(), "é日本ok ✓€!");
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_safe() {
        let (out, stopped) = run(&["zz", "é!"], &["aé", "!zz"]);
        assert!(stopped);
        assert_eq!(out.concat(), "a");
        let (out, _) = run(&["ab"], &["xa", "a", "c"]);
        assert_eq!(out.concat(), "xaac");
    }
}
