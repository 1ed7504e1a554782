//! Reading opcode arguments: fixed-size fields, length-prefixed strings, text lines.

use std::io::{BufRead, Read};

use super::{MAX_LINE, PickleError, Result, Value, invalid};

pub(super) struct Input<'a, R> {
    pub r: &'a mut R,
    pub pos: u64,
}

fn read_err(e: std::io::Error) -> PickleError {
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            PickleError::Invalid("truncated: the data ends before the pickle's STOP".into())
        }
        _ => PickleError::Io(e),
    }
}

impl<R: BufRead> Input<'_, R> {
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(read_err)?;
        self.pos += N as u64;
        Ok(b)
    }
    pub fn byte(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    /// `n` bytes; the buffer grows only as data actually arrives.
    pub fn bytes(&mut self, n: u64) -> Result<Vec<u8>> {
        let mut v = Vec::new();
        Read::by_ref(self.r)
            .take(n)
            .read_to_end(&mut v)
            .map_err(read_err)?;
        if (v.len() as u64) < n {
            return invalid(format!(
                "truncated: a {n}-byte string has only {} bytes",
                v.len()
            ));
        }
        self.pos += n;
        Ok(v)
    }
    pub fn line(&mut self) -> Result<String> {
        let mut v = Vec::new();
        Read::by_ref(self.r)
            .take(MAX_LINE)
            .read_until(b'\n', &mut v)
            .map_err(read_err)?;
        self.pos += v.len() as u64;
        if v.pop() != Some(b'\n') {
            return invalid("unterminated text argument");
        }
        String::from_utf8(v).or_else(|_| invalid("text argument is not UTF-8"))
    }
    pub fn u32(&mut self) -> Result<u64> {
        Ok(u32::from_le_bytes(self.array()?) as u64)
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

pub(super) fn small_int(b: &[u8]) -> Value {
    let neg = b.last().is_some_and(|&x| x & 0x80 != 0);
    let ext = if neg { 0xff } else { 0 };
    if b.len() > 8 && b[8..].iter().any(|&x| x != ext) || b.len() > 8 && (b[7] & 0x80 != 0) != neg {
        return Value::BigInt(b.to_vec());
    }
    let mut le = [ext; 8];
    let n = b.len().min(8);
    le[..n].copy_from_slice(&b[..n]);
    Value::Int(i64::from_le_bytes(le))
}

pub(super) fn py_str(b: Vec<u8>) -> Value {
    String::from_utf8(b).map_or_else(|e| Value::Bytes(e.into_bytes()), Value::Str)
}

/// Decodes the escapes of protocol 0's `raw-unicode-escape` (UNICODE) and repr'd (STRING) text.
pub(super) fn unescape(s: &str, raw: bool) -> Result<Vec<u8>> {
    let (mut out, mut chars) = (Vec::new(), s.chars());
    while let Some(c) = chars.next() {
        let hex = |n: usize, chars: &mut std::str::Chars| -> Result<u32> {
            let h: String = chars.take(n).collect();
            u32::from_str_radix(&h, 16).or_else(|_| invalid("bad escape in text string"))
        };
        let code = match c {
            '\\' => match chars.next() {
                Some('u') => hex(4, &mut chars)?,
                Some('U') => hex(8, &mut chars)?,
                Some('x') if !raw => hex(2, &mut chars)?,
                Some('n') if !raw => 10,
                Some('t') if !raw => 9,
                Some('r') if !raw => 13,
                Some(e @ ('\\' | '\'' | '"')) if !raw => e as u32,
                Some(e) => {
                    out.push(b'\\');
                    e as u32
                }
                None => u32::from('\\'),
            },
            c => c as u32,
        };
        let ch = char::from_u32(code)
            .ok_or_else(|| PickleError::Invalid("bad escape in text string".into()))?;
        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
    }
    Ok(out)
}
