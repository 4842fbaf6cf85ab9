//! `kiln convert`: write any model kiln reads as a GGUF file or a Hugging Face safetensors
//! directory — the format-conversion step users otherwise do with Python scripts.
//!
//! Tensors keep their stored types; rope rows of q/k are reordered to the target format's
//! layout (GGUF `llama` rotates adjacent pairs, Hugging Face rotates halves), so the converted
//! model gives the same logits. A `tokenizer.json` vocabulary is written as GGUF metadata
//! (`kiln_tokenizer::hf_json_gguf_metadata`). Output appears at its path only when complete.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_formats::{gguf, hf, FormatError, LoadedModel, MetaValue, Tensor, TokenizerSource};

use crate::EngineError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Gguf,
    Safetensors,
}

/// Reads the model at `src` and writes it to `out` (a `.gguf` file, or a directory for
/// safetensors).
pub fn convert(src: &Path, target: Target, out: &Path) -> Result<(), EngineError> {
    convert_with(src, target, out, &|| false)
}

/// [`convert`], giving up with an error as soon as `cancelled()` says so (checked between
/// tensors and files; the CLI sets it on Ctrl-C). Whatever ends the run early — cancellation,
/// a read error, a full disk — nothing is left at `out`: the GGUF file is written under a
/// temporary name and renamed at the end, and the safetensors files are written into a
/// temporary directory beside `out` and moved into place only once all are complete.
pub fn convert_with(
    src: &Path,
    target: Target,
    out: &Path,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), EngineError> {
    let model = kiln_formats::load_with(
        src,
        &kiln_formats::LoadOptions {
            residency: Some(kiln_formats::resident::Residency::Mapped),
            interleave: false,
        },
    )?;
    match target {
        Target::Gguf => {
            let (meta, tensors) = gguf_parts(&model, src)?;
            let specs: Vec<gguf::TensorSpec> = tensors
                .iter()
                .map(|(name, t)| gguf::TensorSpec {
                    name: name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                })
                .collect();
            let list: Vec<&Tensor> = tensors.values().collect();
            gguf::write_streamed(
                out,
                meta.iter().map(|(k, v)| (k.as_str(), v)),
                &specs,
                &mut |i| {
                    if cancelled() {
                        return Err(FormatError::Invalid("cancelled".into()));
                    }
                    Ok(list[i].plain_bytes().into_owned())
                },
            )?;
        }
        Target::Safetensors => write_hf_dir(&model, out, cancelled)?,
    }
    Ok(())
}

/// GGUF metadata in file order, and tensors by name.
pub(crate) type GgufParts = (Vec<(String, MetaValue)>, BTreeMap<String, Tensor>);

/// The GGUF metadata (model, `general.name` from `src`'s file name, vocabulary, chat
/// template) and tensors (GGUF names and rope layout) of a loaded model.
pub(crate) fn gguf_parts(model: &LoadedModel, src: &Path) -> Result<GgufParts, EngineError> {
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
        if !meta.iter().any(|(k, _)| k == "tokenizer.chat_template") {
            meta.push((
                "tokenizer.chat_template".into(),
                MetaValue::String(t.clone()),
            ));
        }
    }
    Ok((meta, tensors))
}

/// Writes the safetensors directory into `<out>.kiln-tmp`, then moves it to `out` (or, when
/// `out` is an existing directory, moves each finished file into it).
fn write_hf_dir(
    model: &LoadedModel,
    out: &Path,
    cancelled: &dyn Fn() -> bool,
) -> Result<(), EngineError> {
    let tmp = gguf::temporary_path(out);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    let check = || {
        if cancelled() {
            Err(EngineError::Invalid("cancelled".into()))
        } else {
            Ok(())
        }
    };
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
        let tensors = hf::hf_tensors(&model.config, &model.tensors)?;
        check()?;
        hf::write_safetensors(
            &tmp.join("model.safetensors"),
            tensors.iter().map(|(k, v)| (k.as_str(), v)),
            None,
        )?;
        check()?;
        let config = hf::config_to_json(&model.config)?;
        write_json(&tmp.join("config.json"), &config)?;
        let gen = serde_json::json!({
            "bos_token_id": model.config.bos_token_id,
            "eos_token_id": model.config.eos_token_ids,
        });
        write_json(&tmp.join("generation_config.json"), &gen)?;
        copy_tokenizer(&model.tokenizer, &tmp)?;
        check()?;
        if out.is_dir() {
            for entry in std::fs::read_dir(&tmp).map_err(|e| io(&tmp, e))? {
                let entry = entry.map_err(|e| io(&tmp, e))?;
                let to = out.join(entry.file_name());
                std::fs::rename(entry.path(), &to).map_err(|e| io(&to, e))?;
            }
            std::fs::remove_dir(&tmp).map_err(|e| io(&tmp, e))
        } else {
            std::fs::rename(&tmp, out).map_err(|e| io(out, e))
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
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
        TokenizerSource::HfJson(path) => Ok(kiln_tokenizer::hf_json_gguf_metadata(path)?),
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
