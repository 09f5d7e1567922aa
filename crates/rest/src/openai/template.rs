//! Hugging Face chat templates rendered with minijinja.

use serde_json::Value;

use super::OpenAiError;

/// Renders `template` (a Hugging Face chat template) for `messages` as transformers'
/// `apply_chat_template` does: Jinja with `trim_blocks` and `lstrip_blocks`, Python's string
/// methods, `raise_exception`, `bos_token`, `eos_token`, `add_generation_prompt=true`. A
/// template that does not compile is the model's fault (500); one that fails on these
/// messages (its `raise_exception`, most often) the request's (400).
pub fn render_chat(
    model: &str,
    template: &str,
    bos_token: &str,
    eos_token: &str,
    messages: &[Value],
) -> Result<String, OpenAiError> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    env.add_template("chat_template", template).map_err(|e| {
        OpenAiError::internal(format!("the chat template of model '{model}' does not compile: {e:#}"))
    })?;
    let compiled = env
        .get_template("chat_template")
        .map_err(|e| OpenAiError::internal(format!("model '{model}': {e}")))?;
    compiled
        .render(minijinja::context! {
            messages => messages,
            bos_token => bos_token,
            eos_token => eos_token,
            add_generation_prompt => true,
        })
        .map_err(|e| {
            let detail = e.detail().map(str::to_owned).unwrap_or_else(|| e.to_string());
            OpenAiError::invalid(
                "messages",
                format!("the chat template of model '{model}' cannot render these messages: {detail}"),
            )
        })
}
