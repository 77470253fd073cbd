//! Nix's base-32 encoding: its own alphabet (no e, o, u, t) and a least-significant-first
//! bit order, so it is not RFC 4648 base32.

use thiserror::Error;

const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Why a nixbase32 string did not decode.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid nixbase32 character {0:?}")]
    InvalidChar(char),
    #[error("nixbase32 string of length {got} does not encode {want} bytes")]
    WrongLength { got: usize, want: usize },
    #[error("nixbase32 string has bits set beyond the encoded length")]
    Overflow,
}

/// Length of the encoding of `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        (bytes * 8 - 1) / 5 + 1
    }
}

/// Number of bytes a string of `chars` characters decodes to.
pub const fn decoded_len(chars: usize) -> usize {
    chars * 5 / 8
}

/// Digit value of every byte, `0xff` for bytes outside the alphabet: decoding sits on
/// the narinfo hot path, where a search of the alphabet per character shows up.
const DIGITS: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

fn digit(c: u8) -> Option<u8> {
    match DIGITS[c as usize] {
        0xff => None,
        d => Some(d),
    }
}

/// True when every byte is in the nixbase32 alphabet.
pub fn is_valid(s: &str) -> bool {
    s.bytes().all(|c| digit(c).is_some())
}

/// Encodes bytes the way Nix prints hashes and store path digests.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let low = input[i] >> j;
        let high = if i + 1 < input.len() {
            // Shifting a u8 left by 8 is not allowed; widen first.
            ((input[i + 1] as u16) << (8 - j)) as u8
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Decodes a string into exactly `want` bytes.
pub fn decode_exact(s: &str, want: usize) -> Result<Vec<u8>, DecodeError> {
    let mut out = vec![0u8; want];
    decode_into(s, &mut out)?;
    Ok(out)
}

/// Decodes a string into `out`, which it fills exactly (no allocation: store path hash
/// parts are decoded on every narinfo request).
pub fn decode_into(s: &str, out: &mut [u8]) -> Result<(), DecodeError> {
    let want = out.len();
    if s.len() != encoded_len(want) {
        return Err(DecodeError::WrongLength { got: s.len(), want });
    }
    out.fill(0);
    for (n, &c) in s.as_bytes().iter().rev().enumerate() {
        let d = digit(c).ok_or(DecodeError::InvalidChar(c as char))?;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        out[i] |= ((d as u16) << j) as u8;
        let carry = ((d as u16) >> (8 - j)) as u8;
        if i + 1 < want {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(DecodeError::Overflow);
        }
    }
    Ok(())
}

/// Decodes a string into as many bytes as its length implies.
pub fn decode(s: &str) -> Result<Vec<u8>, DecodeError> {
    decode_exact(s, decoded_len(s.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vectors() {
        // sha256("") as Nix prints it (`nix hash to-base32 sha256:e3b0…`).
        let digest =
            hex::decode("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
                .unwrap();
        assert_eq!(
            encode(&digest),
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
        assert_eq!(decode(&encode(&digest)).unwrap(), digest);
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            decode_exact("e", 1),
            Err(DecodeError::WrongLength { got: 1, want: 1 })
        );
        assert_eq!(decode_exact("0e", 1), Err(DecodeError::InvalidChar('e')));
        // "z" in the top position of a 1-byte value sets bits above bit 7.
        assert_eq!(decode_exact("z0", 1), Err(DecodeError::Overflow));
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let s = encode(&bytes);
            prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode_exact(&s, bytes.len()).unwrap(), bytes);
        }
    }
}
