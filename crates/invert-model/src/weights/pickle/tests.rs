//! Hand-assembled pickles: hostile globals, malformed and oversized streams, torch structures.

use super::*;

/// A pickle assembler (protocol 2 unless told otherwise).
#[derive(Clone)]
pub(crate) struct P(pub Vec<u8>);

impl P {
    pub fn new() -> Self {
        P(vec![0x80, 2])
    }
    pub fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    pub fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    pub fn str(self, s: &str) -> Self {
        self.op(b"X")
            .op(&(s.len() as u32).to_le_bytes())
            .op(s.as_bytes())
    }
    pub fn int(self, i: i64) -> Self {
        self.op(&[0x8a, 8]).op(&i.to_le_bytes())
    }
    pub fn ints(self, v: &[i64]) -> Self {
        v.iter().fold(self.op(b"("), |p, &i| p.int(i)).op(b"t")
    }
    /// `BINPERSID` of `('storage', torch.<ty>, key, 'cpu', numel)`.
    pub fn storage(self, ty: &str, key: &str, numel: i64) -> Self {
        let p = self
            .op(b"(")
            .str("storage")
            .global("torch", ty)
            .str(key)
            .str("cpu");
        p.int(numel).op(b"tQ")
    }
    /// `_rebuild_tensor_v2(storage, offset, shape, stride, False, OrderedDict())`.
    pub fn tensor(self, st: (&str, &str, i64), offset: i64, shape: &[i64], stride: &[i64]) -> Self {
        let p = self.global("torch._utils", "_rebuild_tensor_v2").op(b"(");
        let p = p
            .storage(st.0, st.1, st.2)
            .int(offset)
            .ints(shape)
            .ints(stride);
        p.op(&[0x89])
            .global("collections", "OrderedDict")
            .op(b")R")
            .op(b"tR")
    }
    pub fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

pub(crate) fn run(bytes: &[u8]) -> Result<Pickle> {
    parse(&mut &bytes[..])
}

fn unsafe_global(bytes: &[u8]) -> String {
    match run(bytes) {
        Err(PickleError::UnsafeGlobal(g)) => g,
        other => panic!("expected UnsafeGlobal, got {other:?}"),
    }
}

fn invalid_reason(bytes: &[u8]) -> String {
    match run(bytes) {
        Err(PickleError::Invalid(r)) => r,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn refuses_os_system() {
    let p = P::new()
        .global("os", "system")
        .str("touch /tmp/pwned")
        .op(&[0x85])
        .op(b"R")
        .stop();
    assert_eq!(unsafe_global(&p), "os.system");
}

#[test]
fn refuses_builtins_eval_via_stack_global() {
    let mut p = vec![0x80, 4, 0x95, 0, 0, 0, 0, 0, 0, 0, 0];
    for s in ["builtins", "eval"] {
        p.extend([0x8c, s.len() as u8]);
        p.extend(s.as_bytes());
    }
    p.extend([0x93, 0x8c, 4]);
    p.extend(b"1+1\x85R.");
    assert_eq!(unsafe_global(&p), "builtins.eval");
}

#[test]
fn refuses_before_reading_anything_further() {
    // The rest is garbage and truncated: the refusal must come first.
    let p = P::new()
        .global("posix", "system")
        .op(&[0xff, 0xfe, b'X', 0xff, 0xff])
        .0;
    assert_eq!(unsafe_global(&p), "posix.system");
}

#[test]
fn refuses_everything_outside_the_allow_list() {
    for (m, n) in [
        ("builtins", "getattr"),
        ("builtins", "exec"),
        ("__builtin__", "eval"),
        ("__builtin__", "getattr"),
        ("subprocess", "Popen"),
        ("nt", "system"),
        ("torch", "load"),
        ("torch._utils", "_rebuild_tensor_v2.__globals__"),
        ("collections", "OrderedDict.fromkeys"),
        ("torch.nn.modules.container", "Sequential"),
        ("numpy.core.multiarray", "_reconstruct"),
    ] {
        assert_eq!(
            unsafe_global(&P::new().global(m, n).stop()),
            format!("{m}.{n}")
        );
    }
    // INST names its class inline.
    let inst = P::new().op(b"(").str("id").op(b"ios\nsystem\n").stop();
    assert_eq!(unsafe_global(&inst), "os.system");
    // The copyreg extension registry can name any global.
    assert!(matches!(
        run(&P::new().op(&[0x82, 1]).stop()),
        Err(PickleError::UnsafeGlobal(_))
    ));
}

#[test]
fn parses_plain_values_and_shares_memo_references() {
    let p = P::new()
        .op(b"}q\x00(")
        .str("i1")
        .op(b"K\xff")
        .str("i2")
        .op(b"M\x01\x02")
        .str("i4")
        .op(b"J\xfe\xff\xff\xff")
        .str("neg")
        .op(&[0x8a, 1, 0x80])
        .str("big")
        .op(&[0x8a, 10])
        .op(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19])
        .str("f")
        .op(b"G")
        .op(&1.5f64.to_be_bytes())
        .str("t")
        .op(&[0x88, 0x89, b'N', 0x87])
        .str("l")
        .op(b"](K\x01K\x02eK\x03a")
        .str("b")
        .op(b"C\x02ab")
        .op(b"u")
        .str("self")
        .op(b"h\x00s.")
        .0;
    let pk = run(&p).unwrap();
    let get = |k: &str| pk.value(pk.dict_get(pk.root, k).unwrap()).clone();
    assert_eq!(get("i1"), Value::Int(255));
    assert_eq!(get("i2"), Value::Int(0x201));
    assert_eq!(get("i4"), Value::Int(-2));
    assert_eq!(get("neg"), Value::Int(-128));
    assert!(matches!(get("big"), Value::BigInt(b) if b.len() == 10));
    assert_eq!(get("f"), Value::Float(1.5));
    assert_eq!(get("b"), Value::Bytes(b"ab".to_vec()));
    let Value::List(l) = get("l") else { panic!() };
    assert_eq!(
        l.iter().map(|&i| pk.value(i).clone()).collect::<Vec<_>>(),
        [1, 2, 3].map(Value::Int)
    );
    // The memoized dict is the same node, and it saw the items set after it was memoized.
    assert_eq!(pk.dict_get(pk.root, "self"), Some(pk.root));
}

#[test]
fn parses_protocol_0_text_opcodes() {
    let p = b"(dp0\nS'a\\'b\\x41'\np1\nI42\nsVcaf\\u00e9\np2\n(lp3\nL-7L\naF0.25\nasI01\ng2\ns.";
    let pk = run(p).unwrap();
    let get = |k: &str| pk.value(pk.dict_get(pk.root, k).unwrap()).clone();
    assert_eq!(get("a'bA"), Value::Int(42));
    let Value::List(l) = get("café") else {
        panic!()
    };
    assert_eq!(pk.value(l[0]), &Value::Int(-7));
    assert_eq!(pk.value(l[1]), &Value::Float(0.25));
    let Value::Dict(d) = pk.value(pk.root) else {
        panic!()
    };
    assert_eq!(pk.value(d[2].0), &Value::Bool(true));
}

#[test]
fn huge_claimed_lengths_fail_without_allocating() {
    for op in [
        P::new()
            .op(&[0x8d])
            .op(&(u64::MAX / 2).to_le_bytes())
            .op(b"abc"),
        P::new().op(b"X\xff\xff\xff\xff").op(b"abc"),
        P::new().op(&[0x8e]).op(&u64::MAX.to_le_bytes()),
        P::new().op(&[0x96]).op(&u64::MAX.to_le_bytes()),
        P::new().op(b"\x8b\xff\xff\xff\x7f\x01"),
    ] {
        assert!(invalid_reason(&op.0).contains("truncated"));
    }
    assert!(invalid_reason(&P::new().op(b"\x8b\xff\xff\xff\xff").0).contains("negative"));
}

#[test]
fn deep_nesting_and_sharing_stay_flat_and_small() {
    // 200k nested lists: no recursion while parsing (or dropping).
    let n = 200_000;
    let mut p = vec![0x80, 2];
    p.extend(std::iter::repeat_n(b']', n + 1));
    p.extend(std::iter::repeat_n(b'a', n));
    p.push(b'.');
    assert_eq!(run(&p).unwrap().len(), n + 1);
    // (x, x) doubled 200 times is 2^200 leaves as a tree, but 201 nodes here.
    let mut p = P::new().op(b"N");
    for _ in 0..200 {
        p = p.op(b"2\x86");
    }
    assert_eq!(run(&p.stop()).unwrap().len(), 201);
    // A million open MARKs then EOF.
    let p = P::new().op(&vec![b'('; 1_000_000]).0;
    assert!(invalid_reason(&p).contains("truncated"));
}

#[test]
fn stack_misuse_is_invalid() {
    for (bytes, what) in [
        (&b"R."[..], "underflow"),
        (b"N(0.", "underflow"),
        (b"N(\x86.", "underflow"),
        (b"Nt.", "MARK"),
        (b"]K\x01K\x02s.", "not a dict"),
        (b"}K\x01a.", "not a list"),
        (b"h\x07.", "memo"),
        (b"(.", "underflow"),
        (b"NN\x81.", "expected a tuple"),
        (b"N)R.", "allow-listed"),
        (b"\xff.", "unknown"),
        (b"\x80\x09.", "protocol"),
    ] {
        let r = invalid_reason(&P::new().op(bytes).0);
        assert!(r.contains(what), "{bytes:?}: {r}");
    }
}

#[test]
fn rebuilds_tensors_with_storage_offsets_and_strides() {
    let p = P::new()
        .op(b"(")
        .tensor(("FloatStorage", "0", 12), 0, &[3, 4], &[4, 1])
        .tensor(("FloatStorage", "0", 12), 5, &[2, 2], &[1, 4])
        .tensor(("HalfStorage", "1", 3), 0, &[1000], &[0])
        .tensor(("LongStorage", "2", 1), 0, &[], &[])
        .op(b"l")
        .stop();
    let pk = run(&p).unwrap();
    let Value::List(items) = pk.value(pk.root) else {
        panic!()
    };
    let t = |i: usize| match pk.value(items[i]) {
        Value::Tensor(t) => (**t).clone(),
        v => panic!("{v:?}"),
    };
    assert_eq!(
        (t(0).offset, t(0).len, t(0).stride.clone()),
        (0, 12, vec![4, 1])
    );
    assert_eq!(
        (t(1).offset, t(1).len, t(1).shape.clone()),
        (5, 6, vec![2, 2])
    );
    assert_eq!((t(2).dtype, t(2).len), (StoredDType::F16, 1));
    assert_eq!(
        (t(3).dtype, t(3).len, t(3).shape.len()),
        (StoredDType::I64, 1, 0)
    );
    assert_eq!(pk.storages["0"], (StoredDType::F32, 12));
    assert_eq!(pk.storages.len(), 3);
}

#[test]
fn tensor_views_are_checked_against_their_storage() {
    let bad = |st: (&str, &str, i64), off: i64, shape: &[i64], stride: &[i64]| {
        invalid_reason(&P::new().tensor(st, off, shape, stride).stop())
    };
    let f = ("FloatStorage", "0", 12);
    assert!(bad(f, 0, &[13], &[1]).contains("needs 13 elements"));
    assert!(bad(f, 9, &[2, 2], &[2, 1]).contains("needs 13"));
    assert!(bad(f, 0, &[1 << 40, 1 << 40], &[0, 0]).contains("overflow"));
    assert!(bad(f, 0, &[3, 3], &[i64::MAX, i64::MAX]).contains("overflow"));
    assert!(bad(f, -1, &[2], &[1]).contains("expected a size"));
    assert!(bad(f, 0, &[2], &[-1]).contains("expected a size"));
    assert!(bad(f, 0, &[2, 2], &[1]).contains("different lengths"));
    assert!(bad(f, 0, &[1 << 30], &[0]).contains("repeats"));
    let foo = P::new()
        .tensor(("FooStorage", "0", 1), 0, &[1], &[1])
        .stop();
    assert_eq!(unsafe_global(&foo), "torch.FooStorage");
    assert!(bad(("FloatStorage", "0", -5), 0, &[1], &[1]).contains("expected a size"));
    // Empty views need no storage at all.
    assert!(
        run(&P::new()
            .tensor(("FloatStorage", "0", 0), 99, &[0, 5], &[5, 1])
            .stop())
        .is_ok()
    );
    // One storage key with two different element sizes.
    let p = P::new()
        .op(b"(")
        .tensor(("FloatStorage", "0", 4), 0, &[4], &[1])
        .tensor(("DoubleStorage", "0", 4), 0, &[4], &[1])
        .op(b"l")
        .stop();
    assert!(invalid_reason(&p).contains("declared twice"));
}

#[test]
fn parameter_dict_via_copyreg_reconstructor_keeps_its_state() {
    let p = P::new()
        .global("copyreg", "_reconstructor")
        .op(b"(")
        .global("torch.nn.modules.container", "ParameterDict")
        .global("builtins", "object")
        .op(b"NtR}(")
        .str("_parameters")
        .op(b"}")
        .str("*")
        .global("torch._utils", "_rebuild_parameter")
        .op(b"(")
        .tensor(("FloatStorage", "0", 16), 0, &[2, 8], &[8, 1])
        .op(&[0x88])
        .global("collections", "OrderedDict")
        .op(b")RtRsub")
        .stop();
    let pk = run(&p).unwrap();
    let Value::Object {
        class: Global::ParameterDict,
        state: Some(state),
    } = pk.value(pk.root)
    else {
        panic!("{:?}", pk.value(pk.root))
    };
    let params = pk.dict_get(*state, "_parameters").unwrap();
    assert!(matches!(
        pk.value(pk.dict_get(params, "*").unwrap()),
        Value::Tensor(_)
    ));
    // _rebuild_parameter of something that is not a tensor.
    let p = P::new()
        .global("torch._utils", "_rebuild_parameter")
        .op(b"(NtR")
        .stop();
    assert!(invalid_reason(&p).contains("not a tensor"));
}

#[test]
fn consumes_exactly_one_pickle() {
    let mut both = P::new().int(5).stop();
    both.extend(P::new().str("next").stop());
    let mut r = &both[..];
    assert_eq!(
        parse(&mut r).map(|p| p.value(p.root).clone()).unwrap(),
        Value::Int(5)
    );
    assert_eq!(
        parse(&mut r).map(|p| p.value(p.root).clone()).unwrap(),
        Value::Str("next".into())
    );
    assert!(r.is_empty());
}

#[test]
fn every_truncation_and_random_garbage_fails_cleanly() {
    let full = P::new()
        .op(b"}(")
        .str("a")
        .tensor(("FloatStorage", "0", 12), 1, &[3, 3], &[1, 3])
        .str("b")
        .int(7)
        .op(b"u")
        .stop();
    assert!(run(&full).is_ok());
    for n in 0..full.len() {
        assert!(
            matches!(run(&full[..n]), Err(PickleError::Invalid(_))),
            "prefix {n}"
        );
    }
    // Random opcode soup (a fixed LCG): any result but a panic is fine.
    let alphabet = b"(012NKMJ]}at)ues\x85\x86\x87hqRb\x88\x89Q.\x94\x8c";
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        let mut p = full[..2].to_vec();
        for _ in 0..(seed % 40) {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let b = alphabet[(seed >> 33) as usize % alphabet.len()];
            p.push(b);
            if b"KMJhq\x8c".contains(&b) {
                p.push((seed >> 20) as u8 % 4);
            }
        }
        let _ = run(&p);
        let cut = (seed >> 40) as usize % full.len();
        let mut mutated = full.clone();
        mutated[cut] = (seed >> 8) as u8;
        let _ = run(&mutated);
    }
}

#[test]
fn repeated_copies_of_one_big_value_are_bounded() {
    // A 100k-entry list, then set(list) 400 times: 40M copied references.
    let mut p = P::new().op(b"Nq\x000]q\x01(");
    p = p.op(&b"h\x00".repeat(100_000)).op(b"e0");
    for _ in 0..400 {
        p = p.global("__builtin__", "set").op(b"h\x01\x85R0");
    }
    assert!(invalid_reason(&p.op(b"N").stop()).contains("steps of work"));
    // DUP is one byte per pushed reference.
    let p = P::new().op(b"N").op(&vec![b'2'; MAX_NODES]);
    assert!(invalid_reason(&p.0).contains("stack deeper"));
    let key = "9".repeat(MAX_KEY + 1);
    let p = P::new()
        .tensor(("FloatStorage", &key, 1), 0, &[1], &[1])
        .stop();
    assert!(invalid_reason(&p).contains("storage key longer"));
}

#[test]
fn protocol_2_bytes_sets_and_inert_objects() {
    let p = P::new()
        .op(b"(")
        .global("_codecs", "encode")
        .str("a\u{ff}")
        .str("latin1")
        .op(b"\x86R")
        .global("builtins", "set")
        .op(b"](K\x01K\x02e\x85R")
        .global("torch", "device")
        .str("cuda:0")
        .op(b"\x85R")
        .op(b"l")
        .stop();
    let pk = run(&p).unwrap();
    let Value::List(items) = pk.value(pk.root) else {
        panic!()
    };
    assert_eq!(pk.value(items[0]), &Value::Bytes(vec![b'a', 0xff]));
    assert!(matches!(pk.value(items[1]), Value::List(v) if v.len() == 2));
    assert!(matches!(
        pk.value(items[2]),
        Value::Object {
            class: Global::Inert(_),
            ..
        }
    ));
    let p = P::new()
        .global("_codecs", "encode")
        .str("\u{100}")
        .op(b"\x85R")
        .stop();
    assert!(invalid_reason(&p).contains("non-latin1"));
}
