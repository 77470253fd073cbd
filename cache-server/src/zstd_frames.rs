//! Walks the frame structure of a zstd stream without decompressing it (RFC 8878,
//! section 3.1): frame headers, block headers and skippable frames. A resumable upload
//! part is checked this way as it arrives: it must be whole frames, and the content
//! sizes its frame headers declare say how many NAR bytes it holds. The bytes
//! themselves are decompressed once, when the finished upload is verified.

use std::io::{self, Read};

const FRAME_MAGIC: u32 = 0xFD2F_B528;
/// Skippable frames use the magic numbers 0x184D2A50 to 0x184D2A5F.
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE_MAGIC: u32 = 0x184D_2A50;
/// Largest block a decoder accepts (Block_Maximum_Size).
const BLOCK_MAX: u32 = 128 * 1024;

/// Why a stream is not whole zstd frames.
#[derive(Debug)]
pub enum FrameError {
    /// Reading failed (also a stream cut short inside a frame).
    Io(io::Error),
    /// The bytes are not zstd frames.
    Invalid(&'static str),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                f.write_str("the stream ends inside a frame")
            }
            FrameError::Io(e) => write!(f, "{e}"),
            FrameError::Invalid(why) => f.write_str(why),
        }
    }
}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Reads `r` to its end, which must fall on a frame boundary after at least one frame.
/// Returns the sum of the frames' declared content sizes, or `None` when a frame does
/// not declare one (the caller then has to decompress to know).
pub fn content_size(r: &mut impl Read) -> Result<Option<u64>, FrameError> {
    let mut total = Some(0u64);
    let mut frames = 0usize;
    loop {
        let mut magic = [0u8; 4];
        if !read_or_end(r, &mut magic)? {
            if frames == 0 {
                return Err(FrameError::Invalid("no zstd frame"));
            }
            return Ok(total);
        }
        frames += 1;
        let magic = u32::from_le_bytes(magic);
        if magic & SKIPPABLE_MASK == SKIPPABLE_MAGIC {
            let len = u32::from_le_bytes(array(r)?);
            skip(r, u64::from(len))?;
            continue;
        }
        if magic != FRAME_MAGIC {
            return Err(FrameError::Invalid("not a zstd frame"));
        }
        let size = frame(r)?;
        total = total.zip(size).and_then(|(t, s)| t.checked_add(s));
    }
}

/// One frame after its magic number: returns its declared content size.
fn frame(r: &mut impl Read) -> Result<Option<u64>, FrameError> {
    let [descriptor] = array(r)?;
    let fcs_flag = descriptor >> 6;
    let single_segment = descriptor & 0x20 != 0;
    if descriptor & 0x08 != 0 {
        return Err(FrameError::Invalid("a reserved frame header bit is set"));
    }
    let checksum = descriptor & 0x04 != 0;
    let dict_id_len = [0u64, 1, 2, 4][usize::from(descriptor & 0x03)];
    if !single_segment {
        let [_window] = array(r)?;
    }
    if dict_id_len > 0 {
        // A dictionary the decoder would not have: never valid for a NAR upload.
        let mut id = [0u8; 4];
        r.read_exact(&mut id[..dict_id_len as usize])?;
        if u32::from_le_bytes(id) != 0 {
            return Err(FrameError::Invalid("the frame needs a dictionary"));
        }
    }
    let size = match (fcs_flag, single_segment) {
        (0, false) => None,
        (0, true) => Some(u64::from(array::<1>(r)?[0])),
        (1, _) => Some(u64::from(u16::from_le_bytes(array(r)?)) + 256),
        (2, _) => Some(u64::from(u32::from_le_bytes(array(r)?))),
        _ => Some(u64::from_le_bytes(array(r)?)),
    };
    loop {
        let h = array::<3>(r)?;
        let header = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
        let last = header & 1 != 0;
        let block_size = header >> 3;
        let body = match (header >> 1) & 0x03 {
            // Raw and compressed blocks carry their bytes; an RLE block one byte.
            0 | 2 => block_size,
            1 => 1,
            _ => return Err(FrameError::Invalid("a reserved block type")),
        };
        if block_size > BLOCK_MAX {
            return Err(FrameError::Invalid("a block larger than 128 KiB"));
        }
        skip(r, u64::from(body))?;
        if last {
            break;
        }
    }
    if checksum {
        skip(r, 4)?;
    }
    Ok(size)
}

fn array<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut a = [0u8; N];
    r.read_exact(&mut a)?;
    Ok(a)
}

/// Fills `buf`, or returns `false` at a clean end before its first byte.
fn read_or_end(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Reads and drops exactly `n` bytes.
fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        // Compressible but not trivially: blocks of every kind show up.
        (0..len)
            .map(|i| (((i * 31) % 251) ^ (i / 1000)) as u8)
            .collect()
    }

    fn with_size(data: &[u8], level: i32) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), level).unwrap();
        e.set_pledged_src_size(Some(data.len() as u64)).unwrap();
        e.include_checksum(true).unwrap();
        std::io::Write::write_all(&mut e, data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn declared_sizes_of_every_frame_header_form_add_up() {
        // Sizes that take each Frame_Content_Size field width.
        let mut stream = Vec::new();
        let mut want = 0u64;
        for len in [0usize, 200, 300, 70_000, 1_000_000] {
            stream.extend(with_size(&data(len), 3));
            want += len as u64;
        }
        // zstd's one-shot API always records the size too.
        stream.extend(zstd::bulk::compress(&data(5000), 1).unwrap());
        want += 5000;
        // A skippable frame holds no content.
        stream.extend(0x184D_2A53u32.to_le_bytes());
        stream.extend(3u32.to_le_bytes());
        stream.extend([1, 2, 3]);
        assert_eq!(content_size(&mut &stream[..]).unwrap(), Some(want));
        // The decoder agrees on what the stream holds.
        let decoded = zstd::decode_all(&stream[..]).unwrap();
        assert_eq!(decoded.len() as u64, want);
    }

    #[test]
    fn a_frame_without_a_declared_size_makes_the_sum_unknown() {
        let mut stream = with_size(&data(1000), 3);
        stream.extend(zstd::encode_all(&data(1000)[..], 3).unwrap());
        assert_eq!(content_size(&mut &stream[..]).unwrap(), None);
    }

    #[test]
    fn streams_that_are_not_whole_frames_are_refused() {
        let whole = with_size(&data(300_000), 3);
        // Cut anywhere inside the frame.
        for cut in [1, 4, 5, 6, 9, 100, whole.len() / 2, whole.len() - 1] {
            let err = content_size(&mut &whole[..cut]).unwrap_err();
            assert!(
                matches!(&err, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "cut at {cut}: {err:?}"
            );
        }
        // A frame followed by the start of another.
        let mut two = whole.clone();
        two.extend(&whole[..10]);
        assert!(content_size(&mut &two[..]).is_err());
        for bad in [
            &b""[..],
            b"not zstd at all",
            &[0x28, 0xB5, 0x2F, 0xFD, 0x08],
        ] {
            assert!(
                matches!(content_size(&mut &bad[..]), Err(FrameError::Invalid(_))),
                "{bad:?}"
            );
        }
        // A reserved block type.
        let mut reserved = vec![0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x05];
        reserved.extend([0x07, 0x00, 0x00]);
        assert!(matches!(
            content_size(&mut &reserved[..]),
            Err(FrameError::Invalid("a reserved block type"))
        ));
    }
}
