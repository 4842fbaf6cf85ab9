//! A restricted unpickler for the pickles `torch.save` writes.
//!
//! It understands the opcodes of pickle protocols 2 to 5 that describe plain data (none,
//! booleans, integers, floats, strings, bytes, tuples, lists, dicts, the memo) plus exactly
//! these references to Python objects:
//!
//! * `torch._utils._rebuild_tensor_v2` and `torch._utils._rebuild_parameter` (and
//!   `_rebuild_parameter_with_state`), which become [`Value::Tensor`] descriptors;
//! * `torch.FloatStorage`, `torch.HalfStorage`, `torch.BFloat16Storage` (and the other typed
//!   storage classes, which only name an element type), inside persistent ids; calling one is
//!   refused;
//! * `collections.OrderedDict`, which becomes an ordinary [`Value::Dict`].
//!
//! Any other global (`os.system`, `builtins.eval`, `subprocess.Popen`, `torch.storage.
//! _load_from_bytes`, ...) is refused when the `GLOBAL` opcode names it, before anything could
//! call it; opcodes that build arbitrary objects (`INST`, `OBJ`, `NEWOBJ`, `EXT*`, ...) are refused
//! too. Nothing is ever executed: the result is a tree of plain values.
//!
//! Resources are bounded: values nest at most [`MAX_DEPTH`] levels, the values created (memo
//! copies included) count against [`MAX_NODES`], and every length is checked against the bytes
//! that remain.

use std::collections::HashMap;

use kiln_kernels::DType;

/// Deepest nesting of containers (and of `MARK`s) accepted.
pub const MAX_DEPTH: u32 = 64;
/// Most values (counting every copy made from the memo) one pickle may create. A state dict
/// needs about 60 per tensor (a 405B-parameter Meta shard has ~1 100 tensors).
pub const MAX_NODES: usize = 2_000_000;

/// The element type a typed storage class (`torch.FloatStorage`, ...) stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageKind {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
    /// Complex float32 (pairs of f32), e.g. the `rope.freqs` of some checkpoints.
    C64,
    C128,
}

impl StorageKind {
    const ALL: [(StorageKind, &'static str); 12] = [
        (StorageKind::F32, "FloatStorage"),
        (StorageKind::F16, "HalfStorage"),
        (StorageKind::BF16, "BFloat16Storage"),
        (StorageKind::F64, "DoubleStorage"),
        (StorageKind::I64, "LongStorage"),
        (StorageKind::I32, "IntStorage"),
        (StorageKind::I16, "ShortStorage"),
        (StorageKind::I8, "CharStorage"),
        (StorageKind::U8, "ByteStorage"),
        (StorageKind::Bool, "BoolStorage"),
        (StorageKind::C64, "ComplexFloatStorage"),
        (StorageKind::C128, "ComplexDoubleStorage"),
    ];

    fn from_class(name: &str) -> Option<StorageKind> {
        StorageKind::ALL
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(k, _)| *k)
    }

    /// The class name, e.g. `torch.FloatStorage`.
    pub fn class_name(self) -> String {
        let n = StorageKind::ALL
            .iter()
            .find(|(k, _)| *k == self)
            .map_or("?", |(_, n)| n);
        format!("torch.{n}")
    }

    pub fn element_size(self) -> usize {
        match self {
            StorageKind::C128 => 16,
            StorageKind::F64 | StorageKind::I64 | StorageKind::C64 => 8,
            StorageKind::F32 | StorageKind::I32 => 4,
            StorageKind::F16 | StorageKind::BF16 | StorageKind::I16 => 2,
            StorageKind::I8 | StorageKind::U8 | StorageKind::Bool => 1,
        }
    }

    /// The kiln type of this element type, for the three float types kiln computes with.
    pub fn dtype(self) -> Option<DType> {
        match self {
            StorageKind::F32 => Some(DType::F32),
            StorageKind::F16 => Some(DType::F16),
            StorageKind::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
}

/// One of the few Python objects a checkpoint pickle may name.
#[derive(Clone, Debug, PartialEq)]
pub enum Global {
    RebuildTensorV2,
    RebuildParameter,
    OrderedDict,
    Storage(StorageKind),
}

/// A storage as a persistent id names it: `('storage', torch.FloatStorage, key, location, numel)`.
/// Its bytes are the archive member `<top>/data/<key>`.
#[derive(Clone, Debug, PartialEq)]
pub struct StorageRef {
    pub kind: StorageKind,
    pub key: String,
    pub location: String,
    /// Number of elements of the whole storage.
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor_v2` describes it: a view of a storage.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorRef {
    pub storage: StorageRef,
    /// In elements.
    pub storage_offset: u64,
    pub shape: Vec<u64>,
    /// In elements.
    pub stride: Vec<u64>,
}

/// A plain value built by the unpickler.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Key/value pairs in insertion order (a later duplicate key wins when read as a map).
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

impl Value {
    /// A short name of the value's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Dict(_) => "dict",
            Value::Global(_) => "global",
            Value::Storage(_) => "storage",
            Value::Tensor(_) => "tensor",
        }
    }

    /// How many nodes this value counts for against [`MAX_NODES`], counting stopped once it
    /// passes `cap` (so a huge value is not walked in full just to be refused).
    fn size(&self, cap: usize) -> usize {
        let seq = |items: &mut dyn Iterator<Item = &Value>| {
            let mut n = 1;
            for v in items {
                if n > cap {
                    break;
                }
                n += v.size(cap - n);
            }
            n
        };
        match self {
            Value::Str(s) => 1 + s.len() / 64,
            Value::Bytes(b) => 1 + b.len() / 64,
            Value::Tuple(v) | Value::List(v) => seq(&mut v.iter()),
            Value::Dict(v) => seq(&mut v.iter().flat_map(|(k, v)| [k, v])),
            Value::Storage(s) => 2 + s.key.len() / 64 + s.location.len() / 64,
            Value::Tensor(t) => 4 + t.shape.len() * 2,
            _ => 1,
        }
    }
}

/// Why a pickle was refused. `Forbidden` is kept apart so callers can tell a hostile file
/// from a damaged one.
#[derive(Debug, Clone, PartialEq)]
pub enum PickleError {
    Forbidden(String),
    Invalid(String),
}

impl std::fmt::Display for PickleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PickleError::Forbidden(g) => {
                write!(
                    f,
                    "refusing to load: pickle references forbidden global `{g}`"
                )
            }
            PickleError::Invalid(m) => write!(f, "bad pickle: {m}"),
        }
    }
}

type Res<T> = std::result::Result<T, PickleError>;

fn invalid<T>(msg: impl Into<String>) -> Res<T> {
    Err(PickleError::Invalid(msg.into()))
}

/// Resolves `module.name` against the allow-list.
fn resolve_global(module: &str, name: &str) -> Res<Global> {
    match (module, name) {
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            Ok(Global::RebuildParameter)
        }
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch", class) => StorageKind::from_class(class)
            .map(Global::Storage)
            .ok_or_else(|| PickleError::Forbidden(format!("{module}.{name}"))),
        _ => Err(PickleError::Forbidden(format!("{module}.{name}"))),
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82..=0x84 => "EXT",
        b'P' => "PERSID",
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'T' | b'U' => "BINSTRING",
        b'g' => "GET",
        b'p' => "PUT",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

struct Unpickler<'a> {
    data: &'a [u8],
    pos: usize,
    /// Values with their nesting depth (0 for scalars).
    stack: Vec<(Value, u32)>,
    marks: Vec<usize>,
    memo: HashMap<u32, (Value, u32)>,
    nodes: usize,
}

/// Unpickles `data` into plain values, refusing every global outside the allow-list.
pub fn unpickle(data: &[u8]) -> std::result::Result<Value, PickleError> {
    let mut u = Unpickler {
        data,
        pos: 0,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        nodes: 0,
    };
    u.run()
}

impl<'a> Unpickler<'a> {
    fn take(&mut self, n: usize) -> Res<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => invalid(format!(
                "truncated: needs {n} more bytes at offset {} of {}",
                self.pos,
                self.data.len()
            )),
        }
    }

    fn byte(&mut self) -> Res<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Res<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }

    fn u32(&mut self) -> Res<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }

    fn u64(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }

    fn len_u64(&mut self) -> Res<usize> {
        let n = self.u64()?;
        usize::try_from(n).or_else(|_| invalid(format!("length {n} too large")))
    }

    fn line(&mut self) -> Res<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest.iter().take(512).position(|&b| b == b'\n');
        let Some(n) = n else {
            return invalid("GLOBAL name not terminated by a newline within 512 bytes");
        };
        let s = std::str::from_utf8(&rest[..n]).or_else(|_| invalid("GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(s)
    }

    fn budget_left(&self) -> usize {
        MAX_NODES.saturating_sub(self.nodes)
    }

    fn count(&mut self, n: usize) -> Res<()> {
        self.nodes += n;
        if self.nodes > MAX_NODES {
            return invalid(format!(
                "more than {MAX_NODES} values (a decompression bomb?)"
            ));
        }
        Ok(())
    }

    fn push(&mut self, v: Value, depth: u32) -> Res<()> {
        if depth > MAX_DEPTH {
            return invalid(format!("values nest deeper than {MAX_DEPTH} levels"));
        }
        self.count(v.size(16).min(16))?;
        self.stack.push((v, depth));
        Ok(())
    }

    fn pop(&mut self) -> Res<(Value, u32)> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return invalid("opcode pops across a MARK");
        }
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => invalid("stack underflow"),
        }
    }

    fn top(&mut self) -> Res<&mut (Value, u32)> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return invalid("opcode reads across a MARK");
        }
        match self.stack.last_mut() {
            Some(v) => Ok(v),
            None => invalid("stack underflow"),
        }
    }

    /// Pops everything above the last MARK, and the MARK.
    fn pop_mark(&mut self) -> Res<Vec<(Value, u32)>> {
        let Some(m) = self.marks.pop() else {
            return invalid("no MARK on the stack");
        };
        Ok(self.stack.split_off(m))
    }

    fn push_seq(&mut self, items: Vec<(Value, u32)>, list: bool) -> Res<()> {
        let depth = 1 + items.iter().map(|(_, d)| *d).max().unwrap_or(0);
        let vals: Vec<Value> = items.into_iter().map(|(v, _)| v).collect();
        let v = if list {
            Value::List(vals)
        } else {
            Value::Tuple(vals)
        };
        self.push(v, depth)
    }

    fn memo_put(&mut self, idx: u32) -> Res<()> {
        if self.memo.len() >= 1_000_000 && !self.memo.contains_key(&idx) {
            return invalid("memo holds more than 1000000 values");
        }
        let left = self.budget_left();
        let n = self.top()?.0.size(left);
        self.count(n)?;
        let (v, d) = self.top()?.clone();
        self.memo.insert(idx, (v, d));
        Ok(())
    }

    fn memo_get(&mut self, idx: u32) -> Res<()> {
        let left = self.budget_left();
        let Some((v, d)) = self.memo.get(&idx) else {
            return invalid(format!("memo index {idx} read before it was written"));
        };
        let n = v.size(left);
        if n > left {
            return invalid(format!(
                "more than {MAX_NODES} values (a decompression bomb?)"
            ));
        }
        let (v, d) = (v.clone(), *d);
        self.count(n)?;
        self.stack.push((v, d));
        Ok(())
    }

    fn add_items(&mut self, items: Vec<(Value, u32)>) -> Res<()> {
        if !items.len().is_multiple_of(2) {
            return invalid("SETITEMS with an odd number of values");
        }
        let (target, depth) = self.top()?;
        let Value::Dict(pairs) = target else {
            return invalid(format!("SETITEM(S) on a {}", target.kind()));
        };
        let mut it = items.into_iter();
        while let (Some((k, dk)), Some((v, dv))) = (it.next(), it.next()) {
            *depth = (*depth).max(1 + dk.max(dv));
            pairs.push((k, v));
        }
        Ok(())
    }

    fn append_items(&mut self, items: Vec<(Value, u32)>) -> Res<()> {
        let (target, depth) = self.top()?;
        let Value::List(list) = target else {
            return invalid(format!("APPEND(S) on a {}", target.kind()));
        };
        for (v, d) in items {
            *depth = (*depth).max(1 + d);
            list.push(v);
        }
        Ok(())
    }

    fn run(&mut self) -> Res<Value> {
        loop {
            if self.pos >= self.data.len() {
                return invalid("truncated: ended without a STOP opcode");
            }
            let op = self.byte()?;
            match op {
                0x80 => {
                    let p = self.byte()?;
                    if p > 5 {
                        return invalid(format!("unsupported pickle protocol {p}"));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint only
                }
                b'.' => {
                    let (v, _) = self.pop()?;
                    return Ok(v);
                }
                b'(' => {
                    if self.marks.len() as u32 >= MAX_DEPTH {
                        return invalid(format!("MARKs nest deeper than {MAX_DEPTH} levels"));
                    }
                    self.marks.push(self.stack.len());
                }
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let left = self.budget_left();
                    let n = self.top()?.0.size(left);
                    self.count(n)?;
                    let (v, d) = self.top()?.clone();
                    self.stack.push((v, d));
                }
                b'N' => self.push(Value::None, 0)?,
                0x88 => self.push(Value::Bool(true), 0)?,
                0x89 => self.push(Value::Bool(false), 0)?,
                b'J' => {
                    let v = self.u32()? as i32;
                    self.push(Value::Int(v as i64), 0)?
                }
                b'K' => {
                    let v = self.byte()?;
                    self.push(Value::Int(v as i64), 0)?
                }
                b'M' => {
                    let v = self.u16()?;
                    self.push(Value::Int(v as i64), 0)?
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.byte()? as usize
                    } else {
                        self.u32()? as usize
                    };
                    if n > 8 {
                        return invalid(format!("integer of {n} bytes is too large"));
                    }
                    let b = self.take(n)?;
                    let mut v: i64 = 0;
                    for (i, &x) in b.iter().enumerate() {
                        v |= (x as i64) << (8 * i);
                    }
                    // Two's complement: sign-extend from the top byte.
                    if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    self.push(Value::Int(v), 0)?
                }
                b'G' => {
                    let b = self.take(8)?;
                    let v = f64::from_be_bytes(b.try_into().unwrap_or_default());
                    self.push(Value::Float(v), 0)?
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()? as usize,
                        0x8c => self.byte()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?;
                    let s = std::str::from_utf8(b).or_else(|_| invalid("string is not UTF-8"))?;
                    self.push(Value::Str(s.to_string()), 0)?
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()? as usize,
                        b'C' => self.byte()? as usize,
                        _ => self.len_u64()?,
                    };
                    let b = self.take(n)?.to_vec();
                    self.push(Value::Bytes(b), 0)?
                }
                b')' => self.push(Value::Tuple(Vec::new()), 1)?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_seq(items, false)?
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push_seq(items, false)?
                }
                b']' => self.push(Value::List(Vec::new()), 1)?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_seq(items, true)?
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append_items(vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append_items(items)?
                }
                b'}' => self.push(Value::Dict(Vec::new()), 1)?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Value::Dict(Vec::new()), 1)?;
                    self.add_items(items)?
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.add_items(vec![k, v])?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.add_items(items)?
                }
                b'q' => {
                    let i = self.byte()? as u32;
                    self.memo_put(i)?
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.byte()? as u32;
                    self.memo_get(i)?
                }
                b'j' => {
                    let i = self.u32()?;
                    self.memo_get(i)?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = resolve_global(module, name)?;
                    self.push(Value::Global(g), 0)?
                }
                0x93 => {
                    let (name, _) = self.pop()?;
                    let (module, _) = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return invalid("STACK_GLOBAL needs two strings");
                    };
                    let g = resolve_global(&module, &name)?;
                    self.push(Value::Global(g), 0)?
                }
                b'R' => {
                    let (args, _) = self.pop()?;
                    let (func, _) = self.pop()?;
                    let (v, d) = reduce(func, args)?;
                    self.push(v, d)?
                }
                b'b' => {
                    let (state, _) = self.pop()?;
                    let (target, _) = self.top()?;
                    // An OrderedDict state_dict carries a `_metadata` attribute (module
                    // versions); it is not needed and is dropped.
                    if !matches!(target, Value::Dict(_)) {
                        return invalid(format!(
                            "BUILD (set state) on a {} with a {} state is not supported",
                            target.kind(),
                            state.kind()
                        ));
                    }
                }
                b'Q' => {
                    let (pid, _) = self.pop()?;
                    let s = persistent_storage(pid)?;
                    self.push(Value::Storage(s), 0)?
                }
                _ => {
                    return invalid(format!(
                        "unsupported opcode 0x{op:02x} ({}) at offset {}",
                        opcode_name(op),
                        self.pos - 1
                    ))
                }
            }
        }
    }
}

fn as_index(v: &Value, what: &str) -> Res<u64> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        other => invalid(format!("{what} must be a non-negative int, not {other:?}")),
    }
}

fn as_dims(v: &Value, what: &str) -> Res<Vec<u64>> {
    let (Value::Tuple(items) | Value::List(items)) = v else {
        return invalid(format!("{what} must be a tuple, not a {}", v.kind()));
    };
    if items.len() > 16 {
        return invalid(format!("{what} has {} dimensions", items.len()));
    }
    items.iter().map(|i| as_index(i, what)).collect()
}

/// Applies an allowed global to its arguments: only builds plain descriptors.
fn reduce(func: Value, args: Value) -> Res<(Value, u32)> {
    let Value::Tuple(args) = args else {
        return invalid(format!(
            "REDUCE arguments must be a tuple, not a {}",
            args.kind()
        ));
    };
    let Value::Global(g) = func else {
        return invalid(format!(
            "REDUCE calls a {}, which is not callable",
            func.kind()
        ));
    };
    match g {
        Global::OrderedDict => {
            if !args.is_empty() {
                return invalid("collections.OrderedDict called with arguments");
            }
            Ok((Value::Dict(Vec::new()), 1))
        }
        Global::RebuildTensorV2 => {
            if !(6..=7).contains(&args.len()) {
                return invalid(format!(
                    "_rebuild_tensor_v2 takes 6 or 7 arguments, got {}",
                    args.len()
                ));
            }
            let Value::Storage(storage) = &args[0] else {
                return invalid(format!(
                    "_rebuild_tensor_v2's first argument must be a storage, not a {}",
                    args[0].kind()
                ));
            };
            let storage_offset = as_index(&args[1], "storage offset")?;
            let shape = as_dims(&args[2], "tensor size")?;
            let stride = as_dims(&args[3], "tensor stride")?;
            if shape.len() != stride.len() {
                return invalid(format!(
                    "tensor size {shape:?} and stride {stride:?} differ in rank"
                ));
            }
            match &args[5] {
                Value::Dict(h) if h.is_empty() => {}
                Value::None => {}
                other => {
                    return invalid(format!("tensor has backward hooks ({})", other.kind()));
                }
            }
            let t = TensorRef {
                storage: storage.clone(),
                storage_offset,
                shape,
                stride,
            };
            Ok((Value::Tensor(t), 0))
        }
        Global::RebuildParameter => match args.first() {
            // (data, requires_grad, hooks[, state]); the state only holds Python attributes.
            Some(Value::Tensor(t)) if (3..=4).contains(&args.len()) => {
                Ok((Value::Tensor(t.clone()), 0))
            }
            _ => invalid("_rebuild_parameter needs (tensor, requires_grad, hooks[, state])"),
        },
        Global::Storage(k) => invalid(format!("{} may not be called", k.class_name())),
    }
}

fn persistent_storage(pid: Value) -> Res<StorageRef> {
    let Value::Tuple(t) = pid else {
        return invalid(format!(
            "persistent id must be a tuple, not a {}",
            pid.kind()
        ));
    };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(Global::Storage(kind)), Value::Str(key), Value::Str(location), numel]
            if tag == "storage" =>
        {
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return invalid(format!("storage key {key:?} is not a plain name"));
            }
            Ok(StorageRef {
                kind: *kind,
                key: key.clone(),
                location: location.clone(),
                numel: as_index(numel, "storage size")?,
            })
        }
        _ => invalid(format!(
            "unsupported persistent id ({})",
            t.iter().map(Value::kind).collect::<Vec<_>>().join(", ")
        )),
    }
}
