//! `kiln convert`: write any model kiln reads as a GGUF file or a Hugging Face safetensors
//! directory — the format-conversion step users otherwise do with Python scripts.
//!
//! Tensors keep their stored types; rope rows of q/k are reordered to the target format's
//! layout (GGUF `llama` rotates adjacent pairs, Hugging Face rotates halves), so the converted
//! model gives the same logits.

use std::path::Path;

use kiln_formats::{gguf, hf, FormatError, MetaValue, TokenizerSource};

use crate::EngineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gguf,
    Safetensors,
}

/// Reads the model at `src` and writes it to `out` (a `.gguf` file, or a directory for
/// safetensors).
pub fn convert(src: &Path, target: Target, out: &Path) -> Result<(), EngineError> {
    let model = kiln_formats::load(src)?;
    match target {
        Target::Gguf => {
            let (cfg, tensors) = gguf::gguf_tensors(&model.config, &model.tensors)?;
            let mut meta = gguf::metadata_from_config(&cfg)?;
            meta.push((
                "general.name".into(),
                MetaValue::String(
                    src.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                ),
            ));
            meta.extend(tokenizer_metadata(&model.tokenizer)?);
            if let Some(t) = &model.chat_template {
                meta.push((
                    "tokenizer.chat_template".into(),
                    MetaValue::String(t.clone()),
                ));
            }
            gguf::write(
                out,
                meta.iter().map(|(k, v)| (k.as_str(), v)),
                tensors.iter().map(|(k, v)| (k.as_str(), v)),
            )?;
        }
        Target::Safetensors => {
            std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
            let tensors = hf::hf_tensors(&model.config, &model.tensors)?;
            hf::write_safetensors(
                &out.join("model.safetensors"),
                tensors.iter().map(|(k, v)| (k.as_str(), v)),
                None,
            )?;
            let config = hf::config_to_json(&model.config)?;
            write_json(&out.join("config.json"), &config)?;
            let gen = serde_json::json!({
                "bos_token_id": model.config.bos_token_id,
                "eos_token_id": model.config.eos_token_ids,
            });
            write_json(&out.join("generation_config.json"), &gen)?;
            copy_tokenizer(&model.tokenizer, out)?;
        }
    }
    Ok(())
}

fn tokenizer_metadata(src: &TokenizerSource) -> Result<Vec<(String, MetaValue)>, EngineError> {
    match src {
        TokenizerSource::Gguf(meta) => Ok(meta
            .iter()
            .filter(|(k, _)| {
                k.starts_with("tokenizer.ggml.")
                    && !k.ends_with("bos_token_id")
                    && !k.ends_with("eos_token_id")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()),
        TokenizerSource::TokenizerModel(path) => {
            let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
            Ok(kiln_tokenizer::sentencepiece_gguf_metadata(&bytes)?)
        }
        TokenizerSource::HfJson(path) => Err(EngineError::Invalid(format!(
            "{}: converting a tokenizer.json vocabulary to GGUF is not supported yet",
            path.display()
        ))),
    }
}

fn copy_tokenizer(src: &TokenizerSource, out: &Path) -> Result<(), EngineError> {
    let copy = |from: &Path, name: &str| -> Result<(), EngineError> {
        std::fs::copy(from, out.join(name)).map_err(|e| io(from, e))?;
        Ok(())
    };
    match src {
        TokenizerSource::TokenizerModel(p) => copy(p, "tokenizer.model"),
        TokenizerSource::HfJson(p) => {
            copy(p, "tokenizer.json")?;
            if let Some(cfg) = p.parent().map(|d| d.join("tokenizer_config.json")) {
                if cfg.is_file() {
                    copy(&cfg, "tokenizer_config.json")?;
                }
            }
            Ok(())
        }
        TokenizerSource::Gguf(_) => Err(EngineError::Invalid(
            "converting a GGUF vocabulary to a Hugging Face tokenizer is not supported yet".into(),
        )),
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| EngineError::Invalid(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| io(path, e))?;
    Ok(())
}

fn io(path: &Path, source: std::io::Error) -> EngineError {
    EngineError::Format(FormatError::Io {
        path: path.to_path_buf(),
        source,
    })
}
