//! Hugging Face model directories: `config.json` (transformers 4 and 5 forms),
//! `generation_config.json`, `model.safetensors` or sharded `model.safetensors.index.json`,
//! tokenizer files and chat templates; plus a safetensors writer.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_kernels::ops::RopeStyle;
use kiln_kernels::{DType, Storage, Tensor};
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};
use serde_json::{Map, Value};

use crate::{
    config::{bounded, checked_head_dim, MAX_DIM, MAX_LAYERS, MAX_VOCAB},
    gguf::map_file,
    io_err, Arch, FormatError, LoadedModel, MetaValue, ModelConfig, MoeConfig, Result, RopeScaling,
    TokenizerSource,
};

fn invalid(msg: impl Into<String>) -> FormatError {
    FormatError::Invalid(msg.into())
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| invalid(format!("{}: invalid JSON: {e}", path.display())))
}

fn read_json_opt(path: &Path) -> Result<Option<Value>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads a Hugging Face model directory.
pub fn load_dir(dir: &Path) -> Result<LoadedModel> {
    let config_path = dir.join("config.json");
    let config_json = read_json(&config_path)?;
    let generation = read_json_opt(&dir.join("generation_config.json"))?;
    let config = config_from_json(&config_json, generation.as_ref())
        .map_err(|e| crate::with_path(e, &config_path))?;
    // Before the tensors are mapped by layer (`load` validates again for every format).
    config
        .validate()
        .map_err(|e| crate::with_path(e, &config_path))?;
    let raw = read_safetensors_dir(dir)?;
    let tensors = canonical_tensors(&config, raw).map_err(|e| crate::with_path(e, dir))?;
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        TokenizerSource::HfJson(dir.join("tokenizer.json"))
    } else if dir.join("tokenizer.model").is_file() {
        TokenizerSource::TokenizerModel(dir.join("tokenizer.model"))
    } else {
        return Err(invalid(format!(
            "{}: no tokenizer.json or tokenizer.model",
            dir.display()
        )));
    };
    let chat_template = chat_template(dir)?;
    let mut metadata = BTreeMap::new();
    flatten_json("", &config_json, &mut metadata);
    if let Some(g) = &generation {
        flatten_json("generation_config.", g, &mut metadata);
    }
    Ok(LoadedModel {
        config,
        tensors,
        tokenizer,
        chat_template,
        metadata,
        format: "Hugging Face safetensors".into(),
    })
}

/// `chat_template.jinja`, else `chat_template` of `tokenizer_config.json` (a string, or a list of
/// `{name, template}` where the one named `default` wins, else the first).
pub fn chat_template(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        return std::fs::read_to_string(&jinja)
            .map(Some)
            .map_err(|e| io_err(&jinja, e));
    }
    let tc_path = dir.join("tokenizer_config.json");
    let Some(tc) = read_json_opt(&tc_path)? else {
        return Ok(None);
    };
    Ok(match tc.get("chat_template") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(list)) => {
            let named = |n: &str| {
                list.iter()
                    .find(|e| e.get("name").and_then(Value::as_str) == Some(n))
            };
            named("default")
                .or_else(|| list.first())
                .and_then(|e| e.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string)
        }
        Some(Value::Null) | None => None,
        Some(other) => {
            return Err(invalid(format!(
                "{}: chat_template is neither a string nor a list: {other}",
                tc_path.display()
            )))
        }
    })
}

/// Flattens JSON objects into dotted keys (`rope_parameters.rope_theta`); nulls are dropped.
pub fn flatten_json(prefix: &str, v: &Value, out: &mut BTreeMap<String, MetaValue>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let key = format!("{prefix}{k}");
                if let Value::Object(_) = v {
                    flatten_json(&format!("{key}."), v, out);
                } else if let Some(mv) = json_to_meta(v) {
                    out.insert(key, mv);
                }
            }
        }
        other => {
            if let Some(mv) = json_to_meta(other) {
                out.insert(prefix.trim_end_matches('.').to_string(), mv);
            }
        }
    }
}

fn json_to_meta(v: &Value) -> Option<MetaValue> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => MetaValue::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                MetaValue::U64(u)
            } else if let Some(i) = n.as_i64() {
                MetaValue::I64(i)
            } else {
                MetaValue::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => MetaValue::String(s.clone()),
        Value::Array(a) => MetaValue::Array(a.iter().filter_map(json_to_meta).collect()),
        Value::Object(_) => MetaValue::String(v.to_string()),
    })
}

// ---------------------------------------------------------------------------------------------
// config.json

/// A view of config.json: the text config first (Gemma 3 nests it under `text_config`), then the
/// top level, then the architecture's transformers defaults.
struct Cfg<'a> {
    layers: Vec<&'a Map<String, Value>>,
    defaults: &'static [(&'static str, f64)],
}

impl<'a> Cfg<'a> {
    fn get(&self, k: &str) -> Option<&'a Value> {
        self.layers
            .iter()
            .find_map(|m| m.get(k).filter(|v| !v.is_null()))
    }

    fn default(&self, k: &str) -> Option<f64> {
        self.defaults.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    fn opt_usize(&self, k: &str) -> Result<Option<usize>> {
        match self.get(k) {
            None => Ok(self.default(k).map(|v| v as usize)),
            Some(v) => match v.as_u64() {
                Some(u) if u <= u32::MAX as u64 => Ok(Some(u as usize)),
                _ => Err(invalid(format!(
                    "{k}: expected a non-negative integer, found {v}"
                ))),
            },
        }
    }

    fn usize(&self, k: &str) -> Result<usize> {
        self.opt_usize(k)?
            .ok_or_else(|| invalid(format!("missing {k}")))
    }

    fn opt_f32(&self, k: &str) -> Result<Option<f32>> {
        match self.get(k) {
            None => Ok(self.default(k).map(|v| v as f32)),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| invalid(format!("{k}: expected a number, found {v}"))),
        }
    }

    fn opt_bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(self.default(k).map(|v| v != 0.0)),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| invalid(format!("{k}: expected true or false, found {v}"))),
        }
    }
}

// transformers' class defaults, used for keys a config omits (save_pretrained leaves out the
// values of a nested text_config that equal its class defaults).
const LLAMA_DEFAULTS: &[(&str, f64)] = &[
    ("bos_token_id", 1.0),
    ("eos_token_id", 2.0),
    ("max_position_embeddings", 2048.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10_000.0),
    ("tie_word_embeddings", 0.0),
];
const MISTRAL_DEFAULTS: &[(&str, f64)] = &[
    ("bos_token_id", 1.0),
    ("eos_token_id", 2.0),
    ("max_position_embeddings", 131_072.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10_000.0),
    ("tie_word_embeddings", 0.0),
];
const QWEN2_DEFAULTS: &[(&str, f64)] = &[
    ("max_position_embeddings", 32_768.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10_000.0),
    ("tie_word_embeddings", 0.0),
    ("max_window_layers", 28.0),
];
const QWEN3_DEFAULTS: &[(&str, f64)] = &[
    ("max_position_embeddings", 32_768.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10_000.0),
    ("tie_word_embeddings", 0.0),
    ("max_window_layers", 28.0),
];
const QWEN3_MOE_DEFAULTS: &[(&str, f64)] = &[
    ("max_position_embeddings", 32_768.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10_000.0),
    ("tie_word_embeddings", 0.0),
    ("max_window_layers", 28.0),
    ("num_experts_per_tok", 8.0),
    ("num_experts", 128.0),
    ("norm_topk_prob", 0.0),
    ("decoder_sparse_step", 1.0),
];
const MIXTRAL_DEFAULTS: &[(&str, f64)] = &[
    ("bos_token_id", 1.0),
    ("eos_token_id", 2.0),
    ("max_position_embeddings", 131_072.0),
    ("rms_norm_eps", 1e-5),
    ("rope_theta", 1_000_000.0),
    ("tie_word_embeddings", 0.0),
    ("num_experts_per_tok", 2.0),
    ("num_local_experts", 8.0),
];
const GEMMA2_DEFAULTS: &[(&str, f64)] = &[
    ("bos_token_id", 2.0),
    ("eos_token_id", 1.0),
    ("max_position_embeddings", 8192.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 10_000.0),
    ("query_pre_attn_scalar", 256.0),
    ("sliding_window", 4096.0),
    ("final_logit_softcapping", 30.0),
    ("attn_logit_softcapping", 50.0),
    ("tie_word_embeddings", 1.0),
];
const OLMO2_DEFAULTS: &[(&str, f64)] = &[
    ("max_position_embeddings", 2048.0),
    ("rms_norm_eps", 1e-5),
    ("rope_theta", 10_000.0),
    ("tie_word_embeddings", 0.0),
];
const PHI3_DEFAULTS: &[(&str, f64)] = &[
    ("bos_token_id", 1.0),
    ("eos_token_id", 32_000.0),
    ("max_position_embeddings", 4096.0),
    ("rms_norm_eps", 1e-5),
    ("rope_theta", 10_000.0),
    ("tie_word_embeddings", 0.0),
];
const GEMMA3_DEFAULTS: &[(&str, f64)] = &[
    ("bos_token_id", 2.0),
    ("eos_token_id", 1.0),
    ("vocab_size", 262_208.0),
    ("hidden_size", 2304.0),
    ("intermediate_size", 9216.0),
    ("num_hidden_layers", 26.0),
    ("num_attention_heads", 8.0),
    ("num_key_value_heads", 4.0),
    ("head_dim", 256.0),
    ("max_position_embeddings", 131_072.0),
    ("rms_norm_eps", 1e-6),
    ("rope_theta", 1_000_000.0),
    ("rope_local_base_freq", 10_000.0),
    ("query_pre_attn_scalar", 256.0),
    ("sliding_window", 4096.0),
    ("sliding_window_pattern", 6.0),
    ("tie_word_embeddings", 1.0),
];

/// What [`parse_rope_scaling`] needs from the rest of config.json.
#[derive(Clone, Copy)]
struct RopeContext {
    max_position_embeddings: usize,
    /// Phi-3 keeps `original_max_position_embeddings` at the top level of config.json.
    top_original: Option<usize>,
}

/// transformers' `get_mscale`: YaRN's attention factor for a scaling factor.
fn yarn_mscale(scale: f32, mscale: f32) -> f32 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

fn parse_rope_scaling(v: Option<&Value>, rc: RopeContext) -> Result<Option<RopeScaling>> {
    let Some(Value::Object(m)) = v else {
        return match v {
            None | Some(Value::Null) => Ok(None),
            Some(other) => Err(invalid(format!("rope scaling is not an object: {other}"))),
        };
    };
    let ty = m
        .get("rope_type")
        .or_else(|| m.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |k: &str| -> Result<f32> {
        m.get(k)
            .and_then(Value::as_f64)
            .map(|x| x as f32)
            .ok_or_else(|| invalid(format!("rope scaling {ty:?} lacks a numeric {k}")))
    };
    let opt = |k: &str| m.get(k).and_then(Value::as_f64).map(|x| x as f32);
    match ty {
        "default" => Ok(None),
        "yarn" => {
            let orig = match opt("original_max_position_embeddings") {
                Some(o) => o as usize,
                None => rc.max_position_embeddings,
            };
            // transformers 5: `factor` as given; only without one, max / original.
            let scale = match opt("factor") {
                Some(f) => f,
                None => rc.max_position_embeddings as f32 / orig.max(1) as f32,
            };
            let factor = scale;
            let attention_factor = match (
                opt("attention_factor"),
                opt("mscale"),
                opt("mscale_all_dim"),
            ) {
                (Some(a), _, _) => a,
                (None, Some(ms), Some(all)) if ms != 0.0 && all != 0.0 => {
                    yarn_mscale(scale, ms) / yarn_mscale(scale, all)
                }
                _ => yarn_mscale(scale, 1.0),
            };
            Ok(Some(RopeScaling::Yarn {
                factor,
                original_max_position_embeddings: orig,
                beta_fast: opt("beta_fast").unwrap_or(32.0),
                beta_slow: opt("beta_slow").unwrap_or(1.0),
                attention_factor,
                truncate: m.get("truncate").and_then(Value::as_bool).unwrap_or(true),
            }))
        }
        "longrope" | "su" => {
            let list = |k: &str| -> Result<Vec<f32>> {
                m.get(k)
                    .and_then(Value::as_array)
                    .and_then(|a| a.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
                    .ok_or_else(|| invalid(format!("rope scaling {ty:?} lacks a numeric list {k}")))
            };
            // transformers 5: a top-level original_max_position_embeddings (Phi-3) wins, then
            // the one in the rope parameters, then max_position_embeddings; `factor` as given,
            // else max / original.
            let orig = rc
                .top_original
                .or(opt("original_max_position_embeddings").map(|o| o as usize))
                .unwrap_or(rc.max_position_embeddings);
            let scale = match opt("factor") {
                Some(f) => f,
                None => rc.max_position_embeddings as f32 / orig.max(1) as f32,
            };
            let attention_factor = match opt("attention_factor") {
                Some(a) => a,
                None if scale <= 1.0 => 1.0,
                None => (1.0 + scale.ln() / (orig as f32).ln()).sqrt(),
            };
            Ok(Some(RopeScaling::LongRope {
                short_factor: list("short_factor")?,
                long_factor: list("long_factor")?,
                original_max_position_embeddings: orig,
                attention_factor,
            }))
        }
        "linear" => Ok(Some(RopeScaling::Linear {
            factor: num("factor")?,
        })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
        })),
        other => Err(FormatError::Unsupported(format!(
            "rope scaling type {other:?}"
        ))),
    }
}

/// (global theta, global scaling, local theta) from `rope_parameters` (transformers 5; may be
/// keyed by layer type) or `rope_theta` / `rope_scaling` / `rope_local_base_freq` (transformers 4).
fn rope_config(c: &Cfg<'_>, rc: RopeContext) -> Result<(f32, Option<RopeScaling>, Option<f32>)> {
    match c.get("rope_parameters") {
        None | Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(invalid(format!(
                "rope_parameters must be an object, not {other}"
            )))
        }
    }
    if let Some(Value::Object(rp)) = c.get("rope_parameters") {
        let per_type = rp.contains_key("full_attention") || rp.contains_key("sliding_attention");
        let global = if per_type {
            rp.get("full_attention")
        } else {
            Some(&Value::Object(rp.clone()))
        };
        let theta_of =
            |v: Option<&Value>| v.and_then(|g| g.get("rope_theta")).and_then(Value::as_f64);
        let theta = theta_of(global)
            .map(|t| t as f32)
            .or(c.opt_f32("rope_theta")?)
            .ok_or_else(|| invalid("rope_parameters without rope_theta"))?;
        let scaling = parse_rope_scaling(global, rc)?;
        let local = if per_type {
            let l = rp.get("sliding_attention");
            if parse_rope_scaling(l, rc)?.is_some() {
                return Err(FormatError::Unsupported(
                    "rope scaling on sliding-window layers".into(),
                ));
            }
            theta_of(l).map(|t| t as f32)
        } else {
            None
        };
        return Ok((theta, scaling, local));
    }
    let theta = c
        .opt_f32("rope_theta")?
        .ok_or_else(|| invalid("missing rope_theta"))?;
    let scaling = parse_rope_scaling(c.get("rope_scaling"), rc)?;
    Ok((theta, scaling, None))
}

fn token_ids(v: Option<&Value>, what: &str) -> Result<Vec<u32>> {
    let one = |x: &Value| {
        x.as_u64()
            .filter(|&u| u <= u32::MAX as u64)
            .map(|u| u as u32)
            .ok_or_else(|| invalid(format!("{what}: not a token id: {x}")))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a.iter().map(one).collect(),
        Some(x) => Ok(vec![one(x)?]),
    }
}

/// Builds the [`ModelConfig`] from a parsed config.json (and generation_config.json, whose token
/// ids take precedence).
pub fn config_from_json(config: &Value, generation: Option<&Value>) -> Result<ModelConfig> {
    let top = config
        .as_object()
        .ok_or_else(|| invalid("config.json is not a JSON object"))?;
    let model_type = top
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("missing model_type"))?;
    let (arch, defaults) = match model_type {
        "llama" => (Arch::Llama, LLAMA_DEFAULTS),
        "mistral" => (Arch::Mistral, MISTRAL_DEFAULTS),
        "qwen2" => (Arch::Qwen2, QWEN2_DEFAULTS),
        "gemma3" | "gemma3_text" => (Arch::Gemma3, GEMMA3_DEFAULTS),
        "qwen3" => (Arch::Qwen3, QWEN3_DEFAULTS),
        "qwen3_moe" => (Arch::Qwen3Moe, QWEN3_MOE_DEFAULTS),
        "mixtral" => (Arch::Mixtral, MIXTRAL_DEFAULTS),
        "gemma2" => (Arch::Gemma2, GEMMA2_DEFAULTS),
        "olmo2" => (Arch::Olmo2, OLMO2_DEFAULTS),
        "phi3" => (Arch::Phi3, PHI3_DEFAULTS),
        other => {
            return Err(FormatError::Unsupported(format!(
            "model_type {other:?} (kiln reads llama, mistral, qwen2, qwen3, qwen3_moe, mixtral, \
                 gemma2, gemma3, gemma3_text, olmo2, phi3)"
        )))
        }
    };
    let mut layers = Vec::new();
    if let Some(Value::Object(t)) = top.get("text_config") {
        layers.push(t);
    }
    layers.push(top);
    let c = Cfg { layers, defaults };

    let dim = |k: &str, v: usize| bounded(k, v, MAX_DIM);
    let hidden_size = dim("hidden_size", c.usize("hidden_size")?)?;
    let n_layers = bounded(
        "num_hidden_layers",
        c.usize("num_hidden_layers")?,
        MAX_LAYERS,
    )?;
    let n_heads = dim("num_attention_heads", c.usize("num_attention_heads")?)?;
    let n_kv_heads = dim(
        "num_key_value_heads",
        c.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
    )?;
    let intermediate_size = dim("intermediate_size", c.usize("intermediate_size")?)?;
    let vocab_size = bounded("vocab_size", c.usize("vocab_size")?, MAX_VOCAB)?;
    let want_act = if matches!(arch, Arch::Gemma3 | Arch::Gemma2) {
        "gelu_pytorch_tanh"
    } else {
        "silu"
    };
    let act_key = if c.get("hidden_activation").is_some() {
        "hidden_activation"
    } else {
        "hidden_act"
    };
    let act = match c.get(act_key) {
        None => None,
        Some(Value::String(a)) => Some(a.as_str()),
        Some(other) => return Err(invalid(format!("{act_key} must be a string, not {other}"))),
    };
    if let Some(a) = act.filter(|&a| a != want_act) {
        return Err(FormatError::Unsupported(format!(
            "{model_type} with activation {a:?} (expected {want_act:?})"
        )));
    }
    let head_dim = checked_head_dim(
        "",
        "hidden_size",
        hidden_size,
        n_heads,
        n_kv_heads,
        c.opt_usize("head_dim")?,
        |d| dim("head_dim", d),
    )?;
    if let Some(p) = c.opt_f32("partial_rotary_factor")? {
        if p != 1.0 {
            return Err(FormatError::Unsupported(format!(
                "partial_rotary_factor {p}"
            )));
        }
    }
    let rms_norm_eps = c
        .opt_f32("rms_norm_eps")?
        .ok_or_else(|| invalid("missing rms_norm_eps"))?;
    let max_position_embeddings = c
        .opt_usize("max_position_embeddings")?
        .ok_or_else(|| invalid("missing max_position_embeddings"))?;
    let rc = RopeContext {
        max_position_embeddings,
        top_original: c.opt_usize("original_max_position_embeddings")?,
    };
    let (rope_theta, rope_scaling, local_from_params) = rope_config(&c, rc)?;
    let tie_word_embeddings = c.opt_bool("tie_word_embeddings")?.unwrap_or(false);

    let layer_types: Option<Vec<bool>> = match c.get("layer_types") {
        None => None,
        Some(Value::Array(a)) => {
            if a.len() != n_layers {
                return Err(invalid(format!(
                    "layer_types has {} entries for {n_layers} layers",
                    a.len()
                )));
            }
            Some(
                a.iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(true),
                        Some("full_attention") => Ok(false),
                        _ => Err(FormatError::Unsupported(format!("layer type {t}"))),
                    })
                    .collect::<Result<_>>()?,
            )
        }
        Some(other) => return Err(invalid(format!("layer_types is not a list: {other}"))),
    };

    let mut rope_local_theta = None;
    let mut query_pre_attn_scalar = None;
    let (sliding_window, sliding_layers) = match arch {
        Arch::Llama | Arch::Olmo2 => (None, Vec::new()),
        Arch::Mixtral | Arch::Phi3 => {
            // Mixtral and Phi-3 configs may name a window for every layer (as Mistral's);
            // null or absent means none.
            let w = c.opt_usize("sliding_window")?.filter(|&w| w > 0);
            (w, Vec::new())
        }
        Arch::Gemma2 => {
            let window = c.usize("sliding_window")?;
            let layers = match layer_types {
                Some(l) => l,
                // transformers' Gemma 2: even layers slide, odd layers are global.
                None => (0..n_layers).map(|i| i % 2 == 0).collect(),
            };
            query_pre_attn_scalar = c.opt_f32("query_pre_attn_scalar")?;
            (Some(window), layers)
        }
        Arch::Mistral => {
            // Absent means transformers' default 4096; null means no window.
            let absent = c.layers.iter().all(|m| !m.contains_key("sliding_window"));
            let w = if absent {
                Some(4096)
            } else {
                c.opt_usize("sliding_window")?
            };
            (w.filter(|&w| w > 0), Vec::new())
        }
        Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe => {
            if c.opt_bool("use_sliding_window")?.unwrap_or(false) {
                let window = c.opt_usize("sliding_window")?.filter(|&w| w > 0);
                let layers = match layer_types {
                    Some(l) => l,
                    None => {
                        let from = c.usize("max_window_layers")?;
                        (0..n_layers).map(|i| i >= from).collect()
                    }
                };
                match window {
                    Some(w) if layers.iter().any(|&s| s) => (Some(w), layers),
                    _ => (None, Vec::new()),
                }
            } else {
                (None, Vec::new())
            }
        }
        Arch::Gemma3 => {
            if c.opt_bool("use_bidirectional_attention")?.unwrap_or(false) {
                return Err(FormatError::Unsupported(
                    "use_bidirectional_attention (an encoder, not a causal model)".into(),
                ));
            }
            let window = c.usize("sliding_window")?;
            let layers = match layer_types {
                Some(l) => l,
                None => {
                    // transformers 5 writes `_sliding_window_pattern` beside `layer_types`.
                    let pattern = match c.opt_usize("_sliding_window_pattern")? {
                        Some(p) if c.get("sliding_window_pattern").is_none() => p,
                        _ => c.usize("sliding_window_pattern")?,
                    };
                    if pattern == 0 {
                        return Err(invalid("sliding_window_pattern is 0"));
                    }
                    (0..n_layers).map(|i| (i + 1) % pattern != 0).collect()
                }
            };
            rope_local_theta = match local_from_params {
                Some(t) => Some(t),
                None => Some(c.opt_f32("rope_local_base_freq")?.unwrap_or(10_000.0)),
            };
            query_pre_attn_scalar = c.opt_f32("query_pre_attn_scalar")?;
            (Some(window), layers)
        }
    };
    if arch != Arch::Gemma3 && local_from_params.is_some() {
        rope_local_theta = local_from_params.filter(|&t| t != rope_theta);
    }

    let softcap = |k: &str| -> Result<Option<f32>> { Ok(c.opt_f32(k)?.filter(|&v| v > 0.0)) };
    let moe = match arch {
        Arch::Mixtral => Some(MoeConfig {
            n_experts: dim("num_local_experts", c.usize("num_local_experts")?)?,
            n_used: c.usize("num_experts_per_tok")?,
            expert_ffn: intermediate_size,
            norm_topk: true,
        }),
        Arch::Qwen3Moe => {
            let step = c.usize("decoder_sparse_step")?;
            let dense = match c.get("mlp_only_layers") {
                None | Some(Value::Null) => false,
                Some(Value::Array(a)) => !a.is_empty(),
                Some(other) => {
                    return Err(invalid(format!("mlp_only_layers is not a list: {other}")))
                }
            };
            if step != 1 || dense {
                return Err(FormatError::Unsupported(
                    "qwen3_moe with dense layers (decoder_sparse_step != 1 or mlp_only_layers)"
                        .into(),
                ));
            }
            // transformers 5 writes `num_local_experts` (its alias of `num_experts`).
            let key = if c.get("num_local_experts").is_some() {
                "num_local_experts"
            } else {
                "num_experts"
            };
            Some(MoeConfig {
                n_experts: dim(key, c.usize(key)?)?,
                n_used: c.usize("num_experts_per_tok")?,
                expert_ffn: dim("moe_intermediate_size", c.usize("moe_intermediate_size")?)?,
                norm_topk: c.opt_bool("norm_topk_prob")?.unwrap_or(false),
            })
        }
        _ => None,
    };
    let ids = |k: &str| -> Result<Vec<u32>> {
        let g = generation.and_then(|g| g.get(k)).filter(|v| !v.is_null());
        match g.or_else(|| c.get(k)) {
            Some(v) => token_ids(Some(v), k),
            None => Ok(c.default(k).map(|d| d as u32).into_iter().collect()),
        }
    };
    let bos_token_id = ids("bos_token_id")?.first().copied();
    let mut eos_token_ids = Vec::new();
    for id in ids("eos_token_id")? {
        if !eos_token_ids.contains(&id) {
            eos_token_ids.push(id);
        }
    }

    Ok(ModelConfig {
        arch,
        vocab_size,
        hidden_size,
        intermediate_size,
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        rms_norm_eps,
        rope_theta,
        rope_local_theta,
        rope_scaling,
        rope_style: RopeStyle::Half,
        max_position_embeddings,
        sliding_window,
        sliding_layers,
        tie_word_embeddings,
        query_pre_attn_scalar,
        final_logit_softcapping: softcap("final_logit_softcapping")?,
        attn_logit_softcapping: softcap("attn_logit_softcapping")?,
        bos_token_id,
        eos_token_ids,
        moe,
    })
}

// ---------------------------------------------------------------------------------------------
// safetensors

fn dtype_of(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Every tensor of one safetensors file, by its stored name, as zero-copy views of the mapping.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let storage = map_file(path)?;
    read_safetensors_bytes(storage).map_err(|e| crate::with_path(e, path))
}

/// [`read_safetensors`] from bytes in memory.
pub fn read_safetensors_bytes(storage: Storage) -> Result<BTreeMap<String, Tensor>> {
    let (n, meta): (usize, Metadata) = SafeTensors::read_metadata(storage.bytes())
        .map_err(|e| invalid(format!("bad safetensors file: {e}")))?;
    let base = 8 + n;
    let mut out = BTreeMap::new();
    for (name, info) in meta.tensors() {
        let dtype = dtype_of(info.dtype).ok_or_else(|| {
            FormatError::Unsupported(format!("tensor {name}: safetensors dtype {:?}", info.dtype))
        })?;
        let (s, e) = info.data_offsets;
        let bytes = storage
            .slice(base + s, e - s)
            .ok_or_else(|| invalid(format!("tensor {name}: data lies outside the file")))?;
        let t = Tensor::new(dtype, info.shape.clone(), bytes)
            .map_err(|err| invalid(format!("tensor {name}: {err}")))?;
        out.insert(name, t);
    }
    Ok(out)
}

fn plain_file_name(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty()
        && p.components().count() == 1
        && matches!(p.components().next(), Some(std::path::Component::Normal(_)))
}

/// The stored tensors of a directory: `model.safetensors`, or the shards that
/// `model.safetensors.index.json` lists (each must exist and hold the tensors it is said to).
pub fn read_safetensors_dir(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return read_safetensors(&single);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.is_file() {
        let hint = if dir.join("pytorch_model.bin").exists() {
            " (pytorch_model.bin is not read; convert it to safetensors)"
        } else {
            ""
        };
        return Err(invalid(format!(
            "{}: no model.safetensors or model.safetensors.index.json{hint}",
            dir.display()
        )));
    }
    let index = read_json(&index_path)?;
    let ip = index_path.display();
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(format!("{ip}: no weight_map object")))?;
    let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .filter(|f| plain_file_name(f))
            .ok_or_else(|| invalid(format!("{ip}: tensor {name}: bad shard name {file}")))?;
        by_file.entry(file).or_default().push(name);
    }
    let mut out = BTreeMap::new();
    for (file, names) in by_file {
        let path: PathBuf = dir.join(file);
        if !path.is_file() {
            return Err(invalid(format!(
                "{}: missing shard file {file} (listed in model.safetensors.index.json)",
                dir.display()
            )));
        }
        let mut shard = read_safetensors(&path)?;
        for name in names {
            let t = shard.remove(name).ok_or_else(|| {
                invalid(format!(
                    "{}: tensor {name} is not in the shard that {ip} names",
                    path.display()
                ))
            })?;
            if out.insert(name.to_string(), t).is_some() {
                return Err(invalid(format!("{ip}: tensor {name} listed twice")));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Names

/// The canonical (GGUF) name of a Hugging Face tensor: `Ok(None)` for tensors kiln ignores
/// (vision tower and projector of multimodal Gemma 3, rotary `inv_freq` buffers), an error for
/// tensors it does not know.
pub fn hf_to_canonical(name: &str, arch: Arch) -> Result<Option<String>> {
    let unknown = || FormatError::Unsupported(format!("unknown tensor {name}"));
    // Multimodal Gemma 3 checkpoints nest the language model.
    let name = if let Some(r) = name.strip_prefix("language_model.") {
        r.to_string()
    } else if let Some(r) = name.strip_prefix("model.language_model.") {
        format!("model.{r}")
    } else {
        name.to_string()
    };
    if name.starts_with("vision_tower.")
        || name.starts_with("multi_modal_projector.")
        || name.starts_with("model.vision_tower.")
        || name.starts_with("model.multi_modal_projector.")
        || name.ends_with("rotary_emb.inv_freq")
    {
        return Ok(None);
    }
    let fixed = match name.as_str() {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Ok(Some(f.to_string()));
    }
    let rest = name.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (layer, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let layer: usize = layer.parse().map_err(|_| unknown())?;
    let (module, suffix) = rest.rsplit_once('.').ok_or_else(unknown)?;
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    let gemma = matches!(arch, Arch::Gemma3 | Arch::Gemma2);
    let olmo = arch == Arch::Olmo2;
    let canon = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" if arch == Arch::Phi3 => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.gate_up_proj" if arch == Arch::Phi3 => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "mlp.gate" if matches!(arch, Arch::Qwen3Moe | Arch::Mixtral) => "ffn_gate_inp",
        "block_sparse_moe.gate" if arch == Arch::Mixtral => "ffn_gate_inp",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" if gemma || olmo => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" if gemma => "ffn_norm",
        "post_feedforward_layernorm" if gemma || olmo => "post_ffw_norm",
        _ => return Err(unknown()),
    };
    Ok(Some(format!("blk.{layer}.{canon}.{suffix}")))
}

/// The Hugging Face name of a canonical tensor (the inverse of [`hf_to_canonical`]).
pub fn canonical_to_hf(name: &str, arch: Arch) -> Option<String> {
    match name {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let gemma = matches!(arch, Arch::Gemma3 | Arch::Gemma2);
    let olmo = arch == Arch::Olmo2;
    let phi3 = arch == Arch::Phi3;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" if phi3 => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if phi3 => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "ffn_gate_inp" if arch == Arch::Qwen3Moe => "mlp.gate",
        "ffn_gate_inp" if arch == Arch::Mixtral => "block_sparse_moe.gate",
        "attn_norm" => "input_layernorm",
        "post_attention_norm" if gemma || olmo => "post_attention_layernorm",
        "ffn_norm" if gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_ffw_norm" if gemma || olmo => "post_feedforward_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// Gemma 2 and 3 store norm weights as `w'` with forward `x * (1 + w')`.
fn is_gemma(arch: Arch) -> bool {
    matches!(arch, Arch::Gemma3 | Arch::Gemma2)
}

fn is_norm(canonical: &str) -> bool {
    canonical.ends_with("norm.weight")
}

/// `w + delta` as an owned F32 tensor (Gemma 3 norm weights between the `1 + w` and `w` forms).
fn shifted(t: &Tensor, delta: f32) -> Result<Tensor> {
    let v: Vec<f32> = t.to_f32_vec().into_iter().map(|x| x + delta).collect();
    Tensor::from_f32(t.shape.clone(), &v).map_err(|e| invalid(e.to_string()))
}

/// Renames stored tensors to canonical names; drops `lm_head` when embeddings are tied; for
/// Gemma 3 turns norm weights `w` into `1 + w` (see the crate docs).
pub fn canonical_tensors(
    cfg: &ModelConfig,
    raw: BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    let mut experts = Experts::default();
    for (name, t) in raw {
        if cfg.moe.is_some() && experts.take(&name, &t, cfg.n_layers)? {
            continue;
        }
        let Some(canon) = hf_to_canonical(&name, cfg.arch)? else {
            continue;
        };
        if let Some(l) = canon.strip_prefix("blk.").and_then(|r| r.split('.').next()) {
            if l.parse::<usize>().map_or(true, |l| l >= cfg.n_layers) {
                return Err(invalid(format!(
                    "tensor {name} is for a layer past the {} configured",
                    cfg.n_layers
                )));
            }
        }
        if canon == "output.weight" && cfg.tie_word_embeddings {
            continue;
        }
        let t = if is_gemma(cfg.arch) && is_norm(&canon) {
            shifted(&t, 1.0)?
        } else {
            t
        };
        if out.insert(canon.clone(), t).is_some() {
            return Err(invalid(format!("two tensors map to {canon}")));
        }
    }
    if cfg.moe.is_some() {
        for (canon, t) in experts.merged(cfg)? {
            if out.insert(canon.clone(), t).is_some() {
                return Err(invalid(format!("two tensors map to {canon}")));
            }
        }
    }
    Ok(out)
}

/// Which matrix of an expert's SwiGLU MLP a tensor holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum ExpertPart {
    Gate,
    Up,
    Down,
}

/// Expert weights of a mixture-of-experts checkpoint, gathered by layer and merged into
/// GGUF's `[n_experts, rows, cols]` tensors (`ffn_{gate,up,down}_exps`). Reads both the
/// per-expert form (`block_sparse_moe.experts.E.w1` for Mixtral, `mlp.experts.E.gate_proj` for
/// Qwen3-MoE) and transformers 5's fused form (`mlp.experts.gate_up_proj`, gate rows first,
/// and `mlp.experts.down_proj`).
#[derive(Default)]
struct Experts {
    single: BTreeMap<(usize, ExpertPart), BTreeMap<usize, Tensor>>,
    fused: BTreeMap<(usize, ExpertPart), Tensor>,
}

impl Experts {
    /// Takes `name` if it is an expert weight; errors on a malformed one.
    fn take(&mut self, name: &str, t: &Tensor, n_layers: usize) -> Result<bool> {
        let Some(rest) = name.strip_prefix("model.layers.") else {
            return Ok(false);
        };
        let Some((layer, rest)) = rest.split_once('.') else {
            return Ok(false);
        };
        let Ok(layer) = layer.parse::<usize>() else {
            return Ok(false);
        };
        let rest = rest
            .strip_prefix("block_sparse_moe.experts.")
            .or_else(|| rest.strip_prefix("mlp.experts."));
        let Some(rest) = rest else {
            return Ok(false);
        };
        if layer >= n_layers {
            return Err(invalid(format!(
                "tensor {name} is for a layer past the {n_layers} configured"
            )));
        }
        let bad = || FormatError::Unsupported(format!("unknown expert tensor {name}"));
        match rest {
            "gate_up_proj" | "down_proj" => {
                if t.shape.len() != 3 {
                    return Err(invalid(format!(
                        "{name} has shape {:?}, expected 3-D",
                        t.shape
                    )));
                }
                let part = if rest == "down_proj" {
                    ExpertPart::Down
                } else {
                    ExpertPart::Gate
                };
                self.fused.insert((layer, part), t.clone());
            }
            _ => {
                let (e, what) = rest.split_once('.').ok_or_else(bad)?;
                let e: usize = e.parse().map_err(|_| bad())?;
                let part = match what {
                    "w1.weight" | "gate_proj.weight" => ExpertPart::Gate,
                    "w3.weight" | "up_proj.weight" => ExpertPart::Up,
                    "w2.weight" | "down_proj.weight" => ExpertPart::Down,
                    _ => return Err(bad()),
                };
                if t.shape.len() != 2 {
                    return Err(invalid(format!(
                        "{name} has shape {:?}, expected 2-D",
                        t.shape
                    )));
                }
                self.single
                    .entry((layer, part))
                    .or_default()
                    .insert(e, t.clone());
            }
        }
        Ok(true)
    }

    /// The merged tensors, by canonical name.
    fn merged(self, cfg: &ModelConfig) -> Result<Vec<(String, Tensor)>> {
        let moe = cfg.moe.as_ref().expect("called for MoE configs");
        let n = moe.n_experts;
        let mut out = Vec::new();
        let canon = |l: usize, p: ExpertPart| {
            let k = match p {
                ExpertPart::Gate => "ffn_gate_exps",
                ExpertPart::Up => "ffn_up_exps",
                ExpertPart::Down => "ffn_down_exps",
            };
            format!("blk.{l}.{k}.weight")
        };
        for ((l, part), t) in self.fused {
            match part {
                ExpertPart::Down => out.push((canon(l, part), t)),
                _ => {
                    // [n, 2·ff, d] → gate [n, ff, d] and up [n, ff, d]
                    let (e, rows, cols) = (t.shape[0], t.shape[1], t.shape[2]);
                    if rows % 2 != 0 {
                        return Err(invalid(format!(
                            "layer {l}: fused gate_up_proj of shape {:?} has an odd row count",
                            t.shape
                        )));
                    }
                    let bytes = t.plain_bytes();
                    let per_expert = bytes.len() / e.max(1);
                    let half = per_expert / 2;
                    let mut gate = Vec::with_capacity(bytes.len() / 2);
                    let mut up = Vec::with_capacity(bytes.len() / 2);
                    for x in bytes.chunks_exact(per_expert) {
                        gate.extend_from_slice(&x[..half]);
                        up.extend_from_slice(&x[half..]);
                    }
                    let shape = vec![e, rows / 2, cols];
                    for (p, b) in [(ExpertPart::Gate, gate), (ExpertPart::Up, up)] {
                        let t = Tensor::new(t.dtype, shape.clone(), Storage::from_vec(b))
                            .map_err(|err| invalid(format!("layer {l} experts: {err}")))?;
                        out.push((canon(l, p), t));
                    }
                }
            }
        }
        for ((l, part), by_expert) in self.single {
            if by_expert.len() != n || by_expert.keys().copied().ne(0..n) {
                return Err(invalid(format!(
                    "layer {l}: expert tensors for experts {:?}, the configuration has {n}",
                    by_expert.keys().collect::<Vec<_>>()
                )));
            }
            let first = by_expert[&0].clone();
            let mut bytes = Vec::with_capacity(first.data.len() * n);
            for t in by_expert.values() {
                if t.shape != first.shape || t.dtype != first.dtype {
                    return Err(invalid(format!(
                        "layer {l}: experts of different shapes or types ({:?} {} vs {:?} {})",
                        t.shape, t.dtype, first.shape, first.dtype
                    )));
                }
                bytes.extend_from_slice(&t.plain_bytes());
            }
            let shape = vec![n, first.shape[0], first.shape[1]];
            let t = Tensor::new(first.dtype, shape, Storage::from_vec(bytes))
                .map_err(|err| invalid(format!("layer {l} experts: {err}")))?;
            out.push((canon(l, part), t));
        }
        Ok(out)
    }
}

/// The inverse of [`canonical_tensors`]: Hugging Face names, q/k rows in rotate-half layout,
/// and for Gemma 3 norms `w = w' - 1`. `rope_freqs.weight` is dropped (see [`config_to_json`]).
pub fn hf_tensors(
    cfg: &ModelConfig,
    tensors: &BTreeMap<String, Tensor>,
) -> Result<BTreeMap<String, Tensor>> {
    let (_, tensors) = crate::layout::with_rope_style(cfg, tensors, RopeStyle::Half)?;
    let mut out = BTreeMap::new();
    for (name, t) in &tensors {
        if name == "rope_freqs.weight"
            || name == "rope_factors_long.weight"
            || name == "rope_factors_short.weight"
        {
            continue;
        }
        if let Some(per_expert) = split_experts(name, t, cfg.arch)? {
            out.extend(per_expert);
            continue;
        }
        let hf = canonical_to_hf(name, cfg.arch).ok_or_else(|| {
            FormatError::Unsupported(format!("tensor {name} has no Hugging Face name"))
        })?;
        let t = if is_gemma(cfg.arch) && is_norm(name) {
            shifted(t, -1.0)?
        } else {
            t.clone()
        };
        out.insert(hf, t);
    }
    Ok(out)
}

/// A merged expert tensor (`blk.N.ffn_{gate,up,down}_exps.weight`) as the per-expert tensors of
/// the architecture's Hugging Face checkpoints; `None` for other tensors.
fn split_experts(name: &str, t: &Tensor, arch: Arch) -> Result<Option<Vec<(String, Tensor)>>> {
    let Some(rest) = name.strip_prefix("blk.") else {
        return Ok(None);
    };
    let Some((layer, module)) = rest.split_once('.') else {
        return Ok(None);
    };
    let part = match module {
        "ffn_gate_exps.weight" => 0,
        "ffn_up_exps.weight" => 1,
        "ffn_down_exps.weight" => 2,
        _ => return Ok(None),
    };
    let hf = |e: usize| match arch {
        Arch::Mixtral => format!(
            "model.layers.{layer}.block_sparse_moe.experts.{e}.{}.weight",
            ["w1", "w3", "w2"][part]
        ),
        _ => format!(
            "model.layers.{layer}.mlp.experts.{e}.{}.weight",
            ["gate_proj", "up_proj", "down_proj"][part]
        ),
    };
    if t.shape.len() != 3 {
        return Err(invalid(format!(
            "{name} has shape {:?}, expected 3-D",
            t.shape
        )));
    }
    let (n, rows, cols) = (t.shape[0], t.shape[1], t.shape[2]);
    let bytes = t.plain_bytes();
    let per = bytes.len() / n.max(1);
    (0..n)
        .map(|e| {
            let b = Storage::from_vec(bytes[e * per..(e + 1) * per].to_vec());
            let t = Tensor::new(t.dtype, vec![rows, cols], b)
                .map_err(|err| invalid(format!("{name}: {err}")))?;
            Ok((hf(e), t))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

// ---------------------------------------------------------------------------------------------
// Writer

struct View<'a>(&'a Tensor, Dtype);

impl safetensors::View for View<'_> {
    fn dtype(&self) -> Dtype {
        self.1
    }
    fn shape(&self) -> &[usize] {
        &self.0.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        self.0.plain_bytes()
    }
    fn data_len(&self) -> usize {
        self.0.data.len()
    }
}

fn views<'a, T>(tensors: T) -> Result<Vec<(&'a str, View<'a>)>>
where
    T: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    tensors
        .into_iter()
        .map(|(name, t)| {
            let d = match t.dtype {
                DType::F32 => Dtype::F32,
                DType::F16 => Dtype::F16,
                DType::BF16 => Dtype::BF16,
                other => {
                    return Err(FormatError::Unsupported(format!(
                    "tensor {name}: {other} cannot be stored in safetensors (F32, F16, BF16 only)"
                )))
                }
            };
            Tensor::new(t.dtype, t.shape.clone(), t.data.clone())
                .map_err(|e| invalid(format!("tensor {name}: {e}")))?;
            Ok((name, View(t, d)))
        })
        .collect()
}

/// Writes a safetensors file (F32/F16/BF16 tensors, names as given, optional `__metadata__`).
/// The file is written beside `path` and renamed into place.
pub fn write_safetensors<'a, T>(
    path: &Path,
    tensors: T,
    metadata: Option<HashMap<String, String>>,
) -> Result<()>
where
    T: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    let v = views(tensors)?;
    safetensors::serialize_to_file(v, metadata, path)
        .map_err(|e| invalid(format!("{}: writing safetensors: {e}", path.display())))
}

/// [`write_safetensors`] into memory.
pub fn safetensors_to_bytes<'a, T>(
    tensors: T,
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>>
where
    T: IntoIterator<Item = (&'a str, &'a Tensor)>,
{
    let v = views(tensors)?;
    safetensors::serialize(v, metadata).map_err(|e| invalid(format!("writing safetensors: {e}")))
}

/// A transformers-5 style config.json for `cfg` (which [`config_from_json`] reads back as `cfg`,
/// with `rope_style` rotate-half, the layout [`hf_tensors`] writes).
pub fn config_to_json(cfg: &ModelConfig) -> Result<Value> {
    use serde_json::json;
    let (class, model_type) = match cfg.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Mistral => ("MistralForCausalLM", "mistral"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
        Arch::Gemma3 => ("Gemma3ForCausalLM", "gemma3_text"),
        Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        Arch::Qwen3Moe => ("Qwen3MoeForCausalLM", "qwen3_moe"),
        Arch::Mixtral => ("MixtralForCausalLM", "mixtral"),
        Arch::Gemma2 => ("Gemma2ForCausalLM", "gemma2"),
        Arch::Olmo2 => ("Olmo2ForCausalLM", "olmo2"),
        Arch::Phi3 => ("Phi3ForCausalLM", "phi3"),
    };
    let mut rope = match &cfg.rope_scaling {
        Some(RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            truncate,
        }) => json!({"rope_type": "yarn", "factor": factor,
                   "original_max_position_embeddings": original_max_position_embeddings,
                   "beta_fast": beta_fast, "beta_slow": beta_slow,
                   "attention_factor": attention_factor, "truncate": truncate}),
        Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            attention_factor,
        }) => json!({"rope_type": "longrope", "short_factor": short_factor,
                   "long_factor": long_factor,
                   "original_max_position_embeddings": original_max_position_embeddings,
                   "attention_factor": attention_factor}),
        None => json!({"rope_type": "default"}),
        Some(RopeScaling::Linear { factor }) => json!({"rope_type": "linear", "factor": factor}),
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        }) => json!({"rope_type": "llama3", "factor": factor, "low_freq_factor": low_freq_factor,
                   "high_freq_factor": high_freq_factor,
                   "original_max_position_embeddings": original_max_position_embeddings}),
        Some(RopeScaling::FreqFactors(_)) => {
            return Err(FormatError::Unsupported(
                "rope frequency factors in config.json (no transformers rope_type holds them)"
                    .into(),
            ))
        }
    };
    rope["rope_theta"] = json!(cfg.rope_theta);
    let eos = match cfg.eos_token_ids.as_slice() {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    };
    let mut v = json!({
        "architectures": [class],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "final_logit_softcapping": cfg.final_logit_softcapping,
        "attn_logit_softcapping": cfg.attn_logit_softcapping,
    });
    let layer_types = |layers: &[bool]| -> Value {
        json!(layers
            .iter()
            .map(|&s| if s {
                "sliding_attention"
            } else {
                "full_attention"
            })
            .collect::<Vec<_>>())
    };
    if let Some(RopeScaling::LongRope {
        original_max_position_embeddings,
        ..
    }) = &cfg.rope_scaling
    {
        v["original_max_position_embeddings"] = json!(original_max_position_embeddings);
    }
    if let Some(m) = &cfg.moe {
        v["num_experts_per_tok"] = json!(m.n_used);
        match cfg.arch {
            Arch::Mixtral if m.norm_topk && m.expert_ffn == cfg.intermediate_size => {
                v["num_local_experts"] = json!(m.n_experts);
            }
            Arch::Qwen3Moe => {
                v["num_experts"] = json!(m.n_experts);
                v["moe_intermediate_size"] = json!(m.expert_ffn);
                v["norm_topk_prob"] = json!(m.norm_topk);
                v["decoder_sparse_step"] = json!(1);
                v["mlp_only_layers"] = json!([]);
            }
            _ => {
                return Err(FormatError::Unsupported(format!(
                    "{model_type} config.json with these experts"
                )))
            }
        }
    }
    match cfg.arch {
        Arch::Gemma2 => {
            v["hidden_activation"] = json!("gelu_pytorch_tanh");
            v["rope_parameters"] = rope;
            v["layer_types"] = layer_types(&cfg.sliding_layers);
            v["sliding_window"] = json!(cfg.sliding_window);
            v["query_pre_attn_scalar"] =
                json!(cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim as f32));
        }
        Arch::Gemma3 => {
            v["hidden_activation"] = json!("gelu_pytorch_tanh");
            let local = cfg.rope_local_theta.unwrap_or(cfg.rope_theta);
            v["rope_parameters"] = json!({
                "full_attention": rope,
                "sliding_attention": {"rope_type": "default", "rope_theta": local},
            });
            let layers = if cfg.sliding_layers.is_empty() && cfg.sliding_window.is_some() {
                vec![true; cfg.n_layers]
            } else {
                cfg.sliding_layers.clone()
            };
            v["layer_types"] = layer_types(&layers);
            v["sliding_window"] = json!(cfg.sliding_window);
            v["query_pre_attn_scalar"] =
                json!(cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim as f32));
        }
        _ => {
            if cfg.rope_local_theta.is_some() || cfg.query_pre_attn_scalar.is_some() {
                return Err(FormatError::Unsupported(format!(
                    "{model_type} config.json with a local rope base or query_pre_attn_scalar"
                )));
            }
            v["hidden_act"] = json!("silu");
            v["rope_parameters"] = rope;
            match (cfg.arch, cfg.sliding_window) {
                (_, None) => {}
                (Arch::Mistral | Arch::Mixtral | Arch::Phi3, Some(w))
                    if cfg.sliding_layers.iter().all(|&s| s) =>
                {
                    v["sliding_window"] = json!(w)
                }
                (Arch::Qwen2 | Arch::Qwen3 | Arch::Qwen3Moe, Some(w)) => {
                    v["use_sliding_window"] = json!(true);
                    v["sliding_window"] = json!(w);
                    v["layer_types"] = layer_types(&cfg.sliding_layers);
                }
                _ => {
                    return Err(FormatError::Unsupported(format!(
                        "{model_type} config.json with this sliding window layout"
                    )))
                }
            }
        }
    }
    Ok(v)
}
