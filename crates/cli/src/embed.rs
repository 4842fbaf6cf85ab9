//! `kiln embed`: embeddings of texts, the engine call `/v1/embeddings` makes.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_engine::openai::EmbeddingList;
use kiln_engine::{embed, EngineOptions, Pooling};

use crate::model_arg::ModelArgs;
use crate::prompt::process_escapes;

#[derive(Args, Debug)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Texts to embed, one vector each (with none and no -f: one text per line of stdin).
    pub texts: Vec<String>,
    /// Read texts from FILE, one per line (verbatim).
    #[arg(short = 'f', long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// How a text's final hidden states become one vector: mean (every token, BOS included) or
    /// last (the last token's, for models trained that way). Then scaled to unit length.
    #[arg(long, value_name = "mean|last", default_value = "mean")]
    pub pooling: Pooling,
    /// Print the OpenAI `/v1/embeddings` response object (the server's) instead of one JSON
    /// array per text.
    #[arg(long)]
    pub json: bool,
    /// Print the cosine similarity of every pair of texts (`i j similarity`) instead of vectors.
    #[arg(long)]
    pub similarity: bool,
    /// Positions per text at most. Default: the model's.
    #[arg(short = 'c', long, value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Take escapes in texts given on the command line literally.
    #[arg(long)]
    pub no_escape: bool,
}

pub fn run(a: EmbedArgs) -> Result<()> {
    let mut texts = Vec::new();
    for t in &a.texts {
        texts.push(if a.no_escape {
            t.clone()
        } else {
            process_escapes(t)?
        });
    }
    let lines = |r: &mut dyn BufRead, texts: &mut Vec<String>| -> Result<()> {
        for line in r.lines() {
            let line = line?;
            if !line.is_empty() {
                texts.push(line);
            }
        }
        Ok(())
    };
    if let Some(f) = &a.file {
        let file =
            std::fs::File::open(f).with_context(|| format!("cannot read {}", f.display()))?;
        lines(&mut std::io::BufReader::new(file), &mut texts)?;
    }
    if a.texts.is_empty() && a.file.is_none() {
        lines(&mut std::io::stdin().lock(), &mut texts)?;
    }
    if texts.is_empty() {
        bail!("nothing to embed: give texts, -f FILE or lines on stdin");
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        bail!("text {i} is empty");
    }
    let engine = a.model.load(EngineOptions {
        context: a.ctx_size,
        max_batch: 1,
        ..Default::default()
    })?;
    let inputs = texts
        .iter()
        .map(|t| engine.tokenize(t))
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = inputs.iter().map(Vec::len).sum();
    let vectors = engine.embed(&inputs, a.pooling)?;
    let mut out = std::io::stdout().lock();
    if a.similarity {
        for i in 0..vectors.len() {
            for j in i + 1..vectors.len() {
                let s = embed::cosine(&vectors[i], &vectors[j]);
                writeln!(out, "{i} {j} {s:.6}")?;
            }
        }
    } else if a.json {
        let list = EmbeddingList::new(engine.name.clone(), vectors, tokens, false);
        writeln!(out, "{}", serde_json::to_string(&list)?)?;
    } else {
        for v in &vectors {
            writeln!(out, "{}", serde_json::to_string(v)?)?;
        }
    }
    Ok(())
}
