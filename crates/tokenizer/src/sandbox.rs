//! Runs chat templates, which come from model files and so are untrusted code, with bounded
//! work and memory: minijinja's fuel (an instruction budget) and recursion limit, and a byte
//! budget for everything the template builds. Every way a template can make a string or list
//! larger than its inputs (`+`, `~`, `*`, filters, `str` methods, `{{ }}` output and literal
//! text) is charged against that budget before or right after the work, so a template that
//! loops for ever or doubles a string forty times fails with a clear error instead of hanging
//! or aborting on a huge allocation.
//!
//! `+`, `~` and `*` have no hook in minijinja, so the compiled template's `Add`, `StringConcat`
//! and `Mul` instructions are rewritten one-for-one into calls of guarded functions (the
//! `unstable_machinery` API; the minijinja version is pinned for that reason).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use minijinja::machinery::{CompiledTemplate, Instruction, Instructions, TemplateConfig, Vm};
use minijinja::value::{Rest, ValueKind};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, State, Value};

/// Instructions a render may execute. The repository's real templates spend 20-50 per
/// message, so this allows conversations of 100 000 messages while stopping a runaway loop in
/// about a second. Templates with long literal text get less (see `render_on_this_thread`):
/// a 2 KiB literal still leaves room for thousands of messages.
pub(crate) const FUEL: u64 = 5_000_000;
/// Bytes that strings and lists built by the template (and its output) may add up to over one
/// render. Lists count 16 bytes an item.
pub(crate) const BYTE_BUDGET: usize = 256 << 20;
/// The largest single string or list (in bytes) a template may build.
pub(crate) const MAX_VALUE_BYTES: usize = 16 << 20;
/// Macro and recursive-loop nesting.
pub(crate) const MAX_RECURSION: usize = 100;
/// Size arguments (batch and slice counts, indent widths, format widths) beyond this are refused.
const MAX_SIZE_ARG: i64 = 100_000;
/// Template source size; real chat templates are a few KiB.
pub(crate) const MAX_TEMPLATE_BYTES: usize = 1 << 20;
/// Stack for the render thread: deep nesting (lists of lists built in a loop) recurses when
/// displayed or dropped, and fuel bounds that depth to well within this.
const RENDER_STACK: usize = 256 << 20;

const ADD: &str = "__kiln_guarded_add";
const CONCAT: &str = "__kiln_guarded_concat";
const MUL: &str = "__kiln_guarded_mul";

fn too_big(what: &str) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "{what} exceeds the chat template limits ({} MiB per value, {} MiB per render)",
            MAX_VALUE_BYTES >> 20,
            BYTE_BUDGET >> 20
        ),
    )
}

/// What one render has built so far.
struct Budget {
    spent: AtomicUsize,
}

impl Budget {
    /// Charges `bytes` for one value about to be built (or just built).
    fn charge(&self, bytes: usize) -> Result<(), Error> {
        if bytes > MAX_VALUE_BYTES {
            return Err(too_big("a string or list built by the template"));
        }
        let before = self.spent.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > BYTE_BUDGET {
            return Err(too_big("the text and lists built by the template"));
        }
        Ok(())
    }
}

/// Bytes a value holds at its top level (strings: their bytes; sized lists and maps: 16 bytes
/// an item; lazy iterables and scalars: nothing, they allocate nothing until iterated).
fn value_bytes(v: &Value) -> usize {
    match v.kind() {
        ValueKind::String | ValueKind::Bytes => v.as_bytes().map_or(0, <[u8]>::len),
        ValueKind::Seq | ValueKind::Map => v.len().unwrap_or(0).saturating_mul(16),
        _ => 0,
    }
}

fn is_seq(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// Items of `v`, refusing (before collecting) more than the per-value limit allows.
fn bounded_items(v: &Value, budget: &Budget) -> Result<Vec<Value>, Error> {
    let cap = MAX_VALUE_BYTES / 16;
    let mut items = Vec::new();
    for item in v.try_iter()? {
        if items.len() >= cap {
            return Err(too_big("a list built by the template"));
        }
        items.push(item);
    }
    budget.charge(items.len() * 16)?;
    Ok(items)
}

fn int_value(v: i128) -> Value {
    i64::try_from(v).map_or_else(|_| Value::from(v), Value::from)
}

fn unsupported(op: &str, a: &Value, b: &Value) -> Error {
    Error::new(
        ErrorKind::InvalidOperation,
        format!(
            "tried to use {op} operator on unsupported types {} and {}",
            a.kind(),
            b.kind()
        ),
    )
}

/// Numeric `a op b` as minijinja computes it: integers stay exact (overflow is an error),
/// anything else is a float.
fn numeric(
    op: &str,
    a: &Value,
    b: &Value,
    int_op: fn(i128, i128) -> Option<i128>,
    float_op: fn(f64, f64) -> f64,
) -> Result<Value, Error> {
    if a.kind() != ValueKind::Number || b.kind() != ValueKind::Number {
        return Err(unsupported(op, a, b));
    }
    if a.is_integer() && b.is_integer() {
        let x = i128::try_from(a.clone())?;
        let y = i128::try_from(b.clone())?;
        return int_op(x, y)
            .map(int_value)
            .ok_or_else(|| Error::new(ErrorKind::InvalidOperation, format!("{op} overflowed")));
    }
    Ok(Value::from(float_op(
        f64::try_from(a.clone())?,
        f64::try_from(b.clone())?,
    )))
}

fn guarded_add(budget: &Budget, a: &Value, b: &Value) -> Result<Value, Error> {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        budget.charge(x.len().saturating_add(y.len()))?;
        return Ok(Value::from([x, y].concat()));
    }
    if is_seq(a) && is_seq(b) {
        let mut items = bounded_items(a, budget)?;
        items.extend(bounded_items(b, budget)?);
        budget.charge(items.len() * 16)?;
        return Ok(Value::from(items));
    }
    numeric("+", a, b, i128::checked_add, |x, y| x + y)
}

fn guarded_concat(budget: &Budget, a: &Value, b: &Value) -> Result<Value, Error> {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        budget.charge(x.len().saturating_add(y.len()))?;
        return Ok(Value::from([x, y].concat()));
    }
    // Displaying a value costs about what the value already holds, which was charged when built.
    let s = format!("{a}{b}");
    budget.charge(s.len())?;
    Ok(Value::from(s))
}

fn guarded_mul(budget: &Budget, a: &Value, b: &Value) -> Result<Value, Error> {
    let (seq, n) = if a.as_str().is_some() || is_seq(a) {
        (a, b)
    } else {
        (b, a)
    };
    if seq.as_str().is_some() || is_seq(seq) {
        let n = n.as_usize().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "strings and lists can only be multiplied by non-negative integers",
            )
        })?;
        if let Some(s) = seq.as_str() {
            budget.charge(s.len().saturating_mul(n))?;
            return Ok(Value::from(s.repeat(n)));
        }
        let items = bounded_items(seq, budget)?;
        budget.charge(items.len().saturating_mul(n).saturating_mul(16))?;
        let mut out = Vec::with_capacity(items.len() * n);
        for _ in 0..n {
            out.extend(items.iter().cloned());
        }
        return Ok(Value::from(out));
    }
    numeric("*", a, b, i128::checked_mul, |x, y| x * y)
}

/// Rewrites `+`, `~` and `*` into calls of the guarded functions (one instruction for one, so
/// jump targets stay valid).
fn guard_instructions(instructions: &mut Instructions<'_>) {
    for idx in 0..instructions.len() as u32 {
        if let Some(instr) = instructions.get_mut(idx) {
            let name = match instr {
                Instruction::Add => ADD,
                Instruction::StringConcat => CONCAT,
                Instruction::Mul => MUL,
                _ => continue,
            };
            *instr = Instruction::CallFunction(name, Some(2));
        }
    }
}

/// The longest literal text the template can emit in one instruction.
fn longest_literal(instructions: &Instructions<'_>) -> usize {
    (0..instructions.len() as u32)
        .filter_map(|i| match instructions.get(i) {
            Some(Instruction::EmitRaw(s)) => Some(s.len()),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// Refuses integer arguments that size an allocation (batch/slice counts, indent widths).
fn check_size_args(filter: &str, args: &[Value]) -> Result<(), Error> {
    for a in args.iter().skip(1) {
        if let Some(n) = a.as_i64() {
            if a.is_integer() && n > MAX_SIZE_ARG {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{filter}: size argument {n} is over the limit of {MAX_SIZE_ARG}"),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses `%`/`{}` format strings whose widths or precisions exceed the size limit.
fn check_format_widths(fmt: &str) -> Result<(), Error> {
    let mut digits = 0u32;
    let mut value: i64 = 0;
    for c in fmt.chars().chain(std::iter::once(' ')) {
        if let Some(d) = c.to_digit(10) {
            digits += 1;
            value = value.saturating_mul(10).saturating_add(i64::from(d));
        } else {
            if digits > 0 && value > MAX_SIZE_ARG {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("format: width {value} is over the limit of {MAX_SIZE_ARG}"),
                ));
            }
            digits = 0;
            value = 0;
        }
    }
    Ok(())
}

/// Bytes `s.replace(from, to)` produces, computed without building it.
fn replaced_len(s: &str, from: &str, to: &str, count: Option<usize>) -> usize {
    let hits = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let hits = count.map_or(hits, |c| c.min(hits));
    s.len()
        .saturating_add(hits.saturating_mul(to.len()))
        .saturating_sub(hits.saturating_mul(from.len()))
}

/// Bytes joining `items` with `sep` produces.
fn joined_len(items: &Value, sep: usize) -> Result<usize, Error> {
    let mut total = 0usize;
    for item in items.try_iter()? {
        let n = match item.as_str() {
            Some(s) => s.len(),
            None => item.to_string().len(),
        };
        total = total.saturating_add(n).saturating_add(sep);
    }
    Ok(total)
}

/// Checks a filter or `str` method call before it runs, where its arguments can make it
/// allocate far more than its inputs hold.
fn precheck(budget: &Budget, name: &str, args: &[Value]) -> Result<(), Error> {
    let arg_str = |i: usize| args.get(i).and_then(Value::as_str);
    match name {
        "batch" | "slice" => check_size_args(name, args),
        "indent" => {
            check_size_args(name, args)?;
            let width = args.get(1).and_then(Value::as_usize).unwrap_or(4);
            let s = arg_str(0).unwrap_or_default();
            let lines = s.bytes().filter(|&b| b == b'\n').count() + 1;
            budget.charge(s.len().saturating_add(lines.saturating_mul(width)))
        }
        "replace" => match (arg_str(0), arg_str(1), arg_str(2)) {
            (Some(s), Some(from), Some(to)) => {
                let count = args.get(3).and_then(Value::as_usize);
                budget.charge(replaced_len(s, from, to, count))
            }
            _ => Ok(()),
        },
        "join" => {
            let sep = arg_str(1).map_or(0, str::len);
            match args.first() {
                Some(items) if is_seq(items) => budget.charge(joined_len(items, sep)?),
                _ => Ok(()),
            }
        }
        "format" => match arg_str(0) {
            Some(fmt) => check_format_widths(fmt),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Wraps a filter: its arguments are checked before it runs and its result charged after.
fn guarded_filter(
    budget: Arc<Budget>,
    name: &'static str,
    inner: Value,
) -> impl Fn(&State, Rest<Value>) -> Result<Value, Error> + Send + Sync + 'static {
    move |state: &State, args: Rest<Value>| {
        precheck(&budget, name, &args)?;
        let rv = inner.call(state, &args)?;
        budget.charge(value_bytes(&rv))?;
        Ok(rv)
    }
}

/// minijinja's built-in filters that can build strings or lists, wrapped by `guarded_filter`.
fn builtin_filters() -> Vec<(&'static str, Value)> {
    use minijinja::filters as f;
    vec![
        ("lower", Value::from_function(f::lower)),
        ("upper", Value::from_function(f::upper)),
        ("title", Value::from_function(f::title)),
        ("capitalize", Value::from_function(f::capitalize)),
        ("replace", Value::from_function(f::replace)),
        ("dictsort", Value::from_function(f::dictsort)),
        ("items", Value::from_function(f::items)),
        ("reverse", Value::from_function(f::reverse)),
        ("trim", Value::from_function(f::trim)),
        ("join", Value::from_function(f::join)),
        ("split", Value::from_function(f::split)),
        ("lines", Value::from_function(f::lines)),
        ("sort", Value::from_function(f::sort)),
        ("list", Value::from_function(f::list)),
        ("string", Value::from_function(f::string)),
        ("batch", Value::from_function(f::batch)),
        ("slice", Value::from_function(f::slice)),
        ("indent", Value::from_function(f::indent)),
        ("unique", Value::from_function(f::unique)),
        ("pprint", Value::from_function(f::pprint)),
        ("format", Value::from_function(f::format)),
    ]
}

/// Installs the guards on `env` for one render.
fn install(env: &mut Environment<'_>, budget: &Arc<Budget>) {
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(MAX_RECURSION);
    let b = budget.clone();
    env.add_function(ADD, move |a: &Value, c: &Value| guarded_add(&b, a, c));
    let b = budget.clone();
    env.add_function(CONCAT, move |a: &Value, c: &Value| guarded_concat(&b, a, c));
    let b = budget.clone();
    env.add_function(MUL, move |a: &Value, c: &Value| guarded_mul(&b, a, c));
    for (name, inner) in builtin_filters() {
        env.add_filter(name, guarded_filter(budget.clone(), name, inner));
    }
    // `{{ }}` output, also into `{% set %}` blocks and macro calls, which capture it as strings.
    let b = budget.clone();
    env.set_formatter(move |out, state, value| {
        let bytes = match value.as_str() {
            Some(s) => s.len(),
            None => value.to_string().len(),
        };
        b.charge(bytes)?;
        minijinja::escape_formatter(out, state, value)
    });
    // Python `str` methods (`.replace`, `.join`, `.format`, ...).
    let b = budget.clone();
    env.set_unknown_method_callback(move |state, value, method, args| {
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(value.clone());
        all.extend(args.iter().cloned());
        if method == "join" {
            // `sep.join(items)`: the receiver is the separator.
            let last = all.len() - 1;
            all.swap(0, last.min(1));
        }
        precheck(&b, method, &all)?;
        let rv = minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)?;
        b.charge(value_bytes(&rv))?;
        Ok(rv)
    });
}

/// Compiles `source` with `env`'s whitespace settings, guards it, and renders it with `ctx`.
/// `configure` adds the caller's functions and filters.
pub(crate) fn render_untrusted(
    source: &str,
    ctx: Value,
    configure: fn(&mut Environment<'_>),
) -> Result<String, String> {
    if source.len() > MAX_TEMPLATE_BYTES {
        return Err(format!(
            "the template is {} bytes, over the limit of {MAX_TEMPLATE_BYTES}",
            source.len()
        ));
    }
    let source = source.to_string();
    // Its own thread: a deep stack for nested values, and a panic inside minijinja (a bug, but
    // the input is hostile) becomes this render's error instead of the caller's.
    let worker = std::thread::Builder::new()
        .name("chat-template".into())
        .stack_size(RENDER_STACK)
        .spawn(move || render_on_this_thread(&source, ctx, configure))
        .map_err(|e| format!("cannot start the template thread: {e}"))?;
    worker
        .join()
        .unwrap_or_else(|_| Err("the template engine panicked".to_string()))
}

fn render_on_this_thread(
    source: &str,
    ctx: Value,
    configure: fn(&mut Environment<'_>),
) -> Result<String, String> {
    let budget = Arc::new(Budget {
        spent: AtomicUsize::new(0),
    });
    let mut env = Environment::new();
    configure(&mut env);
    install(&mut env, &budget);
    let config = TemplateConfig {
        syntax_config: Default::default(),
        ws_config: minijinja::machinery::WhitespaceConfig {
            keep_trailing_newline: false,
            lstrip_blocks: true,
            trim_blocks: true,
        },
        default_auto_escape: Arc::new(|_: &str| AutoEscape::None),
    };
    check_constants(source, &config)?;
    let mut compiled = CompiledTemplate::new("chat", source, &config).map_err(describe)?;
    guard_instructions(&mut compiled.instructions);
    let mut longest = longest_literal(&compiled.instructions);
    for block in compiled.blocks.values_mut() {
        guard_instructions(block);
        longest = longest.max(longest_literal(block));
    }
    // Literal text is emitted without passing the formatter; bound it by what the fuel allows.
    if (FUEL as usize).saturating_mul(longest) > BYTE_BUDGET {
        let fuel = (BYTE_BUDGET / longest.max(1)) as u64;
        env.set_fuel(Some(fuel.max(1)));
    }
    let mut out = String::new();
    let result = Vm::new(&env).eval(
        &compiled.instructions,
        ctx,
        &compiled.blocks,
        &mut minijinja::machinery::make_string_output(&mut out),
        AutoEscape::None,
    );
    match result {
        Ok(_) => Ok(out),
        Err(e) => Err(describe(e)),
    }
}

/// minijinja folds constant expressions while compiling, outside any guard: `'x' * 100000000`
/// (minijinja allows up to 100 MB) in a chain of `~` would build gigabytes before the render
/// starts. Chat templates have no use for large numbers or many `*`, so both are refused.
fn check_constants(source: &str, config: &TemplateConfig) -> Result<(), String> {
    use minijinja::machinery::{tokenize, Token};
    const MAX_MULS: usize = 8;
    let mut muls = 0;
    for token in tokenize(
        source,
        false,
        config.syntax_config.clone(),
        config.ws_config,
    ) {
        match token.map_err(describe)?.0 {
            Token::Int(n) if n > MAX_SIZE_ARG as u64 => {
                return Err(format!(
                    "the integer {n} is over the limit of {MAX_SIZE_ARG} for chat templates"
                ))
            }
            Token::Int128(_) => {
                return Err(format!(
                    "an integer is over the limit of {MAX_SIZE_ARG} for chat templates"
                ))
            }
            Token::Mul => {
                muls += 1;
                if muls > MAX_MULS {
                    return Err(format!(
                        "more than {MAX_MULS} `*` operators; chat templates need few"
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// An error with its chain of causes, on one line.
fn describe(e: Error) -> String {
    let mut msg = if e.kind() == ErrorKind::OutOfFuel {
        format!(
            "{e} (the template ran more than {FUEL} steps; a loop that never ends or is far too long)"
        )
    } else {
        e.to_string()
    };
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    msg
}
