//! The opcode interpreter behind [`super::parse`].

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use super::input::{Input, py_str, small_int, unescape};

use super::{
    Global, MAX_DIMS, MAX_KEY, MAX_NODES, MAX_WORK, NodeId, Pickle, PickleError, Result,
    StorageRef, StoredDType, TensorRef, Value, invalid, resolve_global,
};

#[derive(Default)]
struct Machine {
    nodes: Vec<Value>,
    stack: Vec<NodeId>,
    marks: Vec<usize>,
    memo: HashMap<u64, NodeId>,
    /// Work done so far, see [`MAX_WORK`].
    work: usize,
    storages: BTreeMap<String, (StoredDType, usize)>,
}

/// Interprets one pickle from `r`, consuming exactly the bytes up to and including its STOP.
pub fn parse<R: BufRead>(r: &mut R) -> Result<Pickle> {
    let mut m = Machine::default();
    let mut inp = Input { r, pos: 0 };
    loop {
        let at = inp.pos;
        let op = inp.byte()?;
        match m.step(op, &mut inp) {
            Ok(true) => {}
            Ok(false) => {
                let root = m.pop()?;
                return Ok(Pickle {
                    nodes: m.nodes,
                    root,
                    storages: m.storages,
                });
            }
            Err(PickleError::Invalid(r)) => {
                return invalid(format!("{r} (opcode 0x{op:02x} at byte {at})"));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Machine {
    fn add(&mut self, v: Value) -> Result<NodeId> {
        if self.nodes.len() >= MAX_NODES {
            return invalid(format!("more than {MAX_NODES} values"));
        }
        self.nodes.push(v);
        Ok(self.nodes.len() - 1)
    }
    fn push_id(&mut self, id: NodeId) -> Result<()> {
        if self.stack.len() >= MAX_NODES {
            return invalid(format!("stack deeper than {MAX_NODES}"));
        }
        self.charge(1)?;
        self.stack.push(id);
        Ok(())
    }
    fn push(&mut self, v: Value) -> Result<()> {
        let id = self.add(v)?;
        self.push_id(id)
    }
    fn pop(&mut self) -> Result<NodeId> {
        if self.stack.len() <= self.marks.last().copied().unwrap_or(0) {
            return invalid("stack underflow");
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleError::Invalid("stack underflow".into()))
    }
    fn top(&self) -> Result<NodeId> {
        match self.stack.last() {
            Some(&id) if self.stack.len() > self.marks.last().copied().unwrap_or(0) => Ok(id),
            _ => invalid("stack underflow"),
        }
    }
    fn pop_mark(&mut self) -> Result<Vec<NodeId>> {
        let m = self
            .marks
            .pop()
            .ok_or_else(|| PickleError::Invalid("no MARK on the stack".into()))?;
        if m > self.stack.len() {
            return invalid("stack underflow");
        }
        Ok(self.stack.split_off(m))
    }
    fn get(&mut self, i: u64) -> Result<()> {
        let id = *self
            .memo
            .get(&i)
            .ok_or_else(|| PickleError::Invalid(format!("memo entry {i} is unset")))?;
        self.push_id(id)
    }
    fn put(&mut self, i: u64) -> Result<()> {
        let id = self.top()?;
        self.memo.insert(i, id);
        Ok(())
    }
    fn str_of(&self, id: NodeId) -> Result<&str> {
        match &self.nodes[id] {
            Value::Str(s) => Ok(s),
            v => invalid(format!("expected a string, got {}", v.kind())),
        }
    }
    fn usize_of(&self, id: NodeId) -> Result<usize> {
        match self.nodes[id] {
            Value::Int(i) => {
                usize::try_from(i).or_else(|_| invalid(format!("expected a size, got {i}")))
            }
            ref v => invalid(format!("expected an integer, got {}", v.kind())),
        }
    }
    fn seq_of(&self, id: NodeId) -> Result<&[NodeId]> {
        match &self.nodes[id] {
            Value::Tuple(v) | Value::List(v) => Ok(v),
            v => invalid(format!("expected a tuple or list, got {}", v.kind())),
        }
    }
    fn global_of(&self, id: NodeId) -> Result<Global> {
        match self.nodes[id] {
            Value::Global(g) => Ok(g),
            ref v => invalid(format!(
                "only allow-listed globals can be called, got {}",
                v.kind()
            )),
        }
    }
    /// Accounts for pushing or copying `n` node references or bytes.
    fn charge(&mut self, n: usize) -> Result<()> {
        self.work = self.work.saturating_add(n);
        if self.work > MAX_WORK {
            return invalid(format!(
                "the pickle does more than {MAX_WORK} steps of work"
            ));
        }
        Ok(())
    }
    fn copy_seq(&mut self, id: NodeId) -> Result<Vec<NodeId>> {
        let n = self.seq_of(id)?.len();
        self.charge(n)?;
        Ok(self.seq_of(id)?.to_vec())
    }
    fn sizes(&self, id: NodeId) -> Result<Vec<usize>> {
        let ids = self.seq_of(id)?;
        if ids.len() > MAX_DIMS {
            return invalid(format!("tensor with {} dimensions", ids.len()));
        }
        ids.iter().map(|&i| self.usize_of(i)).collect()
    }
    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        let g = resolve_global(module, name)?;
        self.push(Value::Global(g))
    }

    /// REDUCE, NEWOBJ, INST and OBJ: what calling allow-listed global `f` would produce.
    fn call(&mut self, f: NodeId, args: &[NodeId]) -> Result<()> {
        let g = self.global_of(f)?;
        let arg = |i: usize| {
            args.get(i)
                .copied()
                .ok_or_else(|| PickleError::Invalid(format!("{g:?} needs more arguments")))
        };
        let v = match g {
            Global::OrderedDict => {
                let mut pairs = Vec::new();
                if let Some(&items) = args.first() {
                    self.charge(self.seq_of(items)?.len())?;
                    for &kv in self.seq_of(items)? {
                        match self.seq_of(kv)? {
                            &[k, v] => pairs.push((k, v)),
                            _ => return invalid("OrderedDict item is not a pair"),
                        }
                    }
                }
                Value::Dict(pairs)
            }
            Global::Set => Value::List(match args.first() {
                Some(&a) => self.copy_seq(a)?,
                None => Vec::new(),
            }),
            Global::RebuildTensorV2 | Global::RebuildTensor => {
                let Value::Storage(st) = &self.nodes[arg(0)?] else {
                    return invalid("_rebuild_tensor's first argument is not a storage");
                };
                let (offset, shape, stride) = (
                    self.usize_of(arg(1)?)?,
                    self.sizes(arg(2)?)?,
                    self.sizes(arg(3)?)?,
                );
                if shape.len() != stride.len() {
                    return invalid("tensor shape and stride have different lengths");
                }
                Value::Tensor(Box::new(TensorRef::new(st, offset, shape, stride)?))
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                let data = arg(0)?;
                if !matches!(self.nodes[data], Value::Tensor(_)) {
                    return invalid("_rebuild_parameter's data is not a tensor");
                }
                return self.push_id(data);
            }
            // (func, new_type, args, state): the tensor `func(*args)`; the type is only a label.
            Global::RebuildFromType => {
                let (func, args) = (arg(0)?, self.copy_seq(arg(2)?)?);
                if self.global_of(func)? == Global::RebuildFromType {
                    return invalid("nested _rebuild_from_type_v2");
                }
                self.global_of(arg(1)?)?;
                return self.call(func, &args);
            }
            Global::Reconstructor => Value::Object {
                class: self.global_of(arg(0)?)?,
                state: None,
            },
            Global::Encode => {
                self.charge(self.str_of(arg(0)?)?.len())?;
                let chars = self
                    .str_of(arg(0)?)?
                    .chars()
                    .map(|c| u8::try_from(c as u32));
                Value::Bytes(
                    chars
                        .collect::<std::result::Result<_, _>>()
                        .or_else(|_| invalid("_codecs.encode of a non-latin1 string"))?,
                )
            }
            Global::Storage(_) => return invalid("a storage type called outside a persistent id"),
            Global::Object | Global::ParameterDict | Global::Inert(_) => Value::Object {
                class: g,
                state: None,
            },
        };
        self.push(v)
    }

    /// torch's persistent ids: `('storage', type, key, location, numel[, view])` and, in the
    /// legacy format, `('module', class, source_file, source)`.
    fn persistent(&mut self, pid: NodeId) -> Result<()> {
        let parts = self.copy_seq(pid)?;
        let kind = match parts.first() {
            Some(&k) => self.str_of(k)?,
            None => return invalid("empty persistent id"),
        };
        if kind == "module" && parts.len() >= 2 {
            self.global_of(parts[1])?;
            return self.push_id(parts[1]);
        }
        if kind != "storage" || parts.len() < 5 {
            return invalid(format!("unsupported persistent id `{kind}`"));
        }
        let Global::Storage(dtype) = self.global_of(parts[1])? else {
            return invalid("persistent id names a storage type that is not a storage");
        };
        let (key, numel) = (self.str_of(parts[2])?.to_owned(), self.usize_of(parts[4])?);
        if key.len() > MAX_KEY {
            return invalid(format!("storage key longer than {MAX_KEY} bytes"));
        }
        let view = match parts.get(5).map(|&v| (v, &self.nodes[v])) {
            None | Some((_, Value::None)) => None,
            Some((v, _)) => match *self.seq_of(v)? {
                [_, off, size] => Some((self.usize_of(off)?, self.usize_of(size)?)),
                _ => return invalid("storage view is not (key, offset, size)"),
            },
        };
        if let Some((off, size)) = view
            && off.checked_add(size).is_none_or(|end| end > numel)
        {
            return invalid(format!(
                "storage view {off}+{size} exceeds storage `{key}` of {numel} elements"
            ));
        }
        match self.storages.get(&key) {
            Some(&(d, n)) if d.size() != dtype.size() || n != numel => {
                return invalid(format!(
                    "storage `{key}` is declared twice with different types or sizes"
                ));
            }
            Some(_) => {}
            None => {
                self.storages.insert(key.clone(), (dtype, numel));
            }
        }
        self.push(Value::Storage(Box::new(StorageRef {
            key,
            dtype,
            numel,
            view,
        })))
    }

    /// Runs one opcode; `Ok(false)` at STOP.
    fn step<R: BufRead>(&mut self, op: u8, inp: &mut Input<'_, R>) -> Result<bool> {
        match op {
            b'.' => return Ok(false),
            0x80 => {
                if inp.byte()? > 5 {
                    return invalid("unsupported pickle protocol");
                }
            }
            0x95 => drop(inp.u64()?), // FRAME: only a read-ahead hint
            b'(' if self.marks.len() >= MAX_NODES => return invalid("too many MARKs"),
            b'(' => self.marks.push(self.stack.len()),
            b'0' => drop(self.pop()?),
            b'1' => drop(self.pop_mark()?),
            b'2' => self.push_id(self.top()?)?,
            b'N' => self.push(Value::None)?,
            0x88 => self.push(Value::Bool(true))?,
            0x89 => self.push(Value::Bool(false))?,
            b'I' => match inp.line()?.trim() {
                "00" => self.push(Value::Bool(false))?,
                "01" => self.push(Value::Bool(true))?,
                s => self.push(Value::Int(s.parse().or_else(|_| invalid("bad INT"))?))?,
            },
            b'L' => {
                let line = inp.line()?;
                self.push(Value::Int(
                    line.trim()
                        .trim_end_matches('L')
                        .parse()
                        .or_else(|_| invalid("bad or huge LONG"))?,
                ))?
            }
            b'J' => self.push(Value::Int(i32::from_le_bytes(inp.array()?).into()))?,
            b'K' => self.push(Value::Int(inp.byte()?.into()))?,
            b'M' => self.push(Value::Int(u16::from_le_bytes(inp.array()?).into()))?,
            0x8a => {
                let n = inp.byte()?;
                let b = inp.bytes(n.into())?;
                self.push(small_int(&b))?
            }
            0x8b => {
                let n = i32::from_le_bytes(inp.array()?);
                let b =
                    inp.bytes(u64::try_from(n).or_else(|_| invalid("negative LONG4 length"))?)?;
                self.push(small_int(&b))?
            }
            b'F' => self.push(Value::Float(
                inp.line()?
                    .trim()
                    .parse()
                    .or_else(|_| invalid("bad FLOAT"))?,
            ))?,
            b'G' => self.push(Value::Float(f64::from_be_bytes(inp.array()?)))?,
            b'S' => {
                let line = inp.line()?;
                let s = line.trim_end();
                let q = s
                    .chars()
                    .next()
                    .filter(|&q| (q == '\'' || q == '"') && s.len() >= 2 && s.ends_with(q));
                let inner = q
                    .map(|_| &s[1..s.len() - 1])
                    .ok_or_else(|| PickleError::Invalid("STRING is not quoted".into()))?;
                self.push(py_str(unescape(inner, false)?))?
            }
            b'V' => {
                let line = inp.line()?;
                self.push(py_str(unescape(&line, true)?))?
            }
            b'X' | 0x8c | 0x8d | b'T' | b'U' | b'B' | b'C' | 0x8e | 0x96 => {
                let n = match op {
                    0x8c | b'U' | b'C' => inp.byte()?.into(),
                    0x8d | 0x8e | 0x96 => inp.u64()?,
                    _ => inp.u32()?,
                };
                let b = inp.bytes(n)?;
                let v = match op {
                    b'X' | 0x8c | 0x8d => Value::Str(
                        String::from_utf8(b).or_else(|_| invalid("string is not UTF-8"))?,
                    ),
                    b'T' | b'U' => py_str(b),
                    _ => Value::Bytes(b),
                };
                self.push(v)?
            }
            b')' => self.push(Value::Tuple(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.push(Value::Tuple(items))?
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let at = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .filter(|&a| a >= self.marks.last().copied().unwrap_or(0));
                let items = self
                    .stack
                    .split_off(at.ok_or_else(|| PickleError::Invalid("stack underflow".into()))?);
                self.push(Value::Tuple(items))?
            }
            b']' | 0x8f => self.push(Value::List(Vec::new()))?,
            b'l' | 0x91 => {
                let items = self.pop_mark()?;
                self.push(Value::List(items))?
            }
            b'a' | b'e' | 0x90 => {
                let items = if op == b'a' {
                    vec![self.pop()?]
                } else {
                    self.pop_mark()?
                };
                let target = self.top()?;
                match &mut self.nodes[target] {
                    Value::List(v) => v.extend(items),
                    _ => return invalid("APPEND to something that is not a list"),
                }
            }
            b'}' => self.push(Value::Dict(Vec::new()))?,
            b'd' | b's' | b'u' => {
                let items = match op {
                    b's' => {
                        let v = self.pop()?;
                        vec![self.pop()?, v]
                    }
                    _ => self.pop_mark()?,
                };
                if items.len() % 2 != 0 {
                    return invalid("odd number of items for a dict");
                }
                let pairs = items.chunks_exact(2).map(|kv| (kv[0], kv[1]));
                if op == b'd' {
                    self.push(Value::Dict(pairs.collect()))?;
                } else {
                    let target = self.top()?;
                    match &mut self.nodes[target] {
                        Value::Dict(d) => d.extend(pairs),
                        _ => return invalid("SETITEM on something that is not a dict"),
                    }
                }
            }
            b'p' => self.put(inp.line()?.trim().parse().or_else(|_| invalid("bad PUT"))?)?,
            b'q' => self.put(inp.byte()?.into())?,
            b'r' => self.put(inp.u32()?)?,
            0x94 => self.put(self.memo.len() as u64)?,
            b'g' => self.get(inp.line()?.trim().parse().or_else(|_| invalid("bad GET"))?)?,
            b'h' => self.get(inp.byte()?.into())?,
            b'j' => self.get(inp.u32()?)?,
            b'c' => {
                let (module, name) = (inp.line()?, inp.line()?);
                self.global(&module, &name)?
            }
            0x93 => {
                let (name, module) = (self.pop()?, self.pop()?);
                let (module, name) = (
                    self.str_of(module)?.to_owned(),
                    self.str_of(name)?.to_owned(),
                );
                self.global(&module, &name)?
            }
            b'i' => {
                let (module, name) = (inp.line()?, inp.line()?);
                let g = resolve_global(&module, &name)?;
                let args = self.pop_mark()?;
                let f = self.add(Value::Global(g))?;
                self.call(f, &args)?
            }
            b'o' => {
                let items = self.pop_mark()?;
                let (&f, args) = items
                    .split_first()
                    .ok_or_else(|| PickleError::Invalid("OBJ without a class".into()))?;
                self.call(f, args)?
            }
            b'R' | 0x81 | 0x92 => {
                if op == 0x92 {
                    self.pop()?; // NEWOBJ_EX kwargs
                }
                let args = self.pop()?;
                let f = self.pop()?;
                let args = self.copy_seq(args)?;
                self.call(f, &args)?
            }
            b'b' => {
                let state = self.pop()?;
                let obj = self.top()?;
                // Python would call __setstate__; only objects keep their state here.
                if let Value::Object { state: s, .. } = &mut self.nodes[obj] {
                    *s = Some(state);
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                self.persistent(pid)?
            }
            b'P' => return invalid("text persistent ids are not used by torch"),
            0x82..=0x84 => {
                return Err(PickleError::UnsafeGlobal(
                    "<an object from the copyreg extension registry>".into(),
                ));
            }
            _ => return invalid("unknown or unsupported opcode"),
        }
        Ok(true)
    }
}
