//! Structure-aware mutations: a valid input as its generator encoded it,
//! with the places of its length fields, then bytes flipped, lengths set to
//! hostile values, cut short, bytes inserted, removed or repeated.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

/// A length field of an encoded input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Field {
    /// Offset of its first byte.
    pub at: usize,
    /// 2 or 4 bytes.
    pub width: u8,
    /// Byte order.
    pub big_endian: bool,
}

/// A valid input and where its length fields are.
#[derive(Debug, Clone, Default)]
pub(super) struct Encoded {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// Its length fields, in any order.
    pub fields: Vec<Field>,
}

impl Encoded {
    /// Appends `other`, shifting its fields.
    pub fn append(&mut self, other: Encoded) {
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&other.bytes);
        self.fields.extend(other.fields.into_iter().map(|f| Field {
            at: f.at + base,
            ..f
        }));
    }

    /// Appends a length field with its value.
    pub fn put_len(&mut self, value: u32, width: u8, big_endian: bool) {
        self.fields.push(Field {
            at: self.bytes.len(),
            width,
            big_endian,
        });
        match (width, big_endian) {
            (2, false) => self.bytes.extend_from_slice(&(value as u16).to_le_bytes()),
            (2, true) => self.bytes.extend_from_slice(&(value as u16).to_be_bytes()),
            (_, false) => self.bytes.extend_from_slice(&value.to_le_bytes()),
            (_, true) => self.bytes.extend_from_slice(&value.to_be_bytes()),
        }
    }
}

/// One change to an encoded input.
#[derive(Debug, Clone)]
pub(super) enum Mutation {
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Set one of the recorded length fields.
    Length(Index, u32),
    /// Write a hostile 32-bit word anywhere (either byte order).
    Word(Index, u32, bool),
    /// Cut the input here.
    Truncate(Index),
    /// Insert bytes here.
    Insert(Index, Vec<u8>),
    /// Remove up to this many bytes from here.
    Remove(Index, usize),
    /// Copy a run of bytes (a header, an item) to another place.
    Repeat(Index, usize, Index),
}

/// Length values a hostile peer would try: zero, tiny, undefined, just
/// below undefined, huge, and anything.
pub(super) fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(0xFFFF_FFFF),
        Just(0xFFFF_FFF0),
        Just(0xFFFF_FFFE),
        Just(0x7FFF_FFFF),
        Just(0x8000_0000),
        Just(0xFFFF),
        Just(0x0001_0000),
        0u32..0x400,
        any::<u32>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        3 => (any::<Index>(), hostile_u32()).prop_map(|(i, v)| Mutation::Length(i, v)),
        1 => (any::<Index>(), hostile_u32(), any::<bool>())
            .prop_map(|(i, v, be)| Mutation::Word(i, v, be)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), vec(any::<u8>(), 1..12)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Remove(i, n)),
        1 => (any::<Index>(), 1usize..32, any::<Index>())
            .prop_map(|(i, n, j)| Mutation::Repeat(i, n, j)),
    ]
}

/// Applies `mutations` in order (an offset past the end is skipped).
pub(super) fn apply(input: &Encoded, mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = input.bytes.clone();
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, mask) if len > 0 => bytes[i.index(len)] ^= mask,
            Mutation::Length(i, value) if !input.fields.is_empty() => {
                let f = input.fields[i.index(input.fields.len())];
                let w = usize::from(f.width);
                if f.at + w <= len {
                    let v = match (w, f.big_endian) {
                        (2, false) => (*value as u16).to_le_bytes().to_vec(),
                        (2, true) => (*value as u16).to_be_bytes().to_vec(),
                        (_, false) => value.to_le_bytes().to_vec(),
                        (_, true) => value.to_be_bytes().to_vec(),
                    };
                    bytes[f.at..f.at + w].copy_from_slice(&v);
                }
            }
            Mutation::Word(i, value, be) if len >= 4 => {
                let at = i.index(len - 3);
                let v = if *be {
                    value.to_be_bytes()
                } else {
                    value.to_le_bytes()
                };
                bytes[at..at + 4].copy_from_slice(&v);
            }
            Mutation::Truncate(i) if len > 0 => bytes.truncate(i.index(len)),
            Mutation::Insert(i, b) => {
                let at = i.index(len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, n) if len > 0 => {
                let at = i.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Repeat(i, n, j) if len > 0 => {
                let from = i.index(len);
                let run = bytes[from..(from + n).min(len)].to_vec();
                let to = j.index(len + 1);
                bytes.splice(to..to, run);
            }
            _ => {}
        }
    }
    bytes
}

/// Inputs built by `valid`, then (two times out of three) changed by a few
/// mutations.
pub(super) fn mutated(valid: impl Strategy<Value = Encoded> + 'static) -> BoxedStrategy<Vec<u8>> {
    let mutations = prop_oneof![1 => Just(Vec::new()), 2 => vec(mutation(), 1..6)];
    (valid, mutations)
        .prop_map(|(input, mutations)| apply(&input, &mutations))
        .boxed()
}

/// Arbitrary bytes: short runs and longer ones.
pub(super) fn arbitrary_bytes() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![vec(any::<u8>(), 0..64), vec(any::<u8>(), 0..4096)].boxed()
}
