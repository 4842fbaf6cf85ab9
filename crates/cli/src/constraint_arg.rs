//! `--schema`, `--grammar`, `--regex`: the constraint flags of `kiln complete` and `kiln chat`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use kiln_engine::{Constraint, ConstraintSpec};

#[derive(Args, Debug, Default)]
pub struct ConstraintArgs {
    /// Hold the output to a JSON schema: a file holding it, or the schema itself (text that
    /// starts with `{`). `--schema '{"type": "object"}'` asks for any JSON object.
    #[arg(
        long,
        visible_alias = "json-schema",
        value_name = "FILE_OR_JSON",
        conflicts_with_all = ["grammar", "regex"]
    )]
    pub schema: Option<String>,
    /// Hold the output to a grammar in llguidance's Lark syntax (`start: ...`), read from FILE.
    #[arg(long, value_name = "FILE", conflicts_with = "regex")]
    pub grammar: Option<PathBuf>,
    /// Hold the output to a regular expression (Rust regex syntax; the whole output matches).
    #[arg(long, value_name = "RE")]
    pub regex: Option<String>,
}

impl ConstraintArgs {
    /// The constraint asked for, if any (compiled by the engine, which names what it refuses).
    pub fn constraint(&self) -> Result<Option<Constraint>> {
        let spec = if let Some(s) = &self.schema {
            let text = if s.trim_start().starts_with('{') {
                s.clone()
            } else {
                std::fs::read_to_string(s)
                    .with_context(|| format!("--schema: reading the schema file {s}"))?
            };
            let schema: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("--schema: {s} is not valid JSON"))?;
            if !schema.is_object() {
                bail!("--schema: a JSON schema is an object ({{...}})");
            }
            ConstraintSpec::JsonSchema(schema)
        } else if let Some(f) = &self.grammar {
            ConstraintSpec::Lark(
                std::fs::read_to_string(f)
                    .with_context(|| format!("--grammar: reading {}", f.display()))?,
            )
        } else if let Some(r) = &self.regex {
            ConstraintSpec::Regex(r.clone())
        } else {
            return Ok(None);
        };
        Ok(Some(Constraint::new(spec)))
    }
}
