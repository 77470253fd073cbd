//! The NAR reader: a pull parser over any `Read` that hashes and counts every byte it
//! consumes and rejects anything but a canonical archive. Memory stays bounded by the
//! nesting depth (at most [`MAX_DEPTH`]): names and targets are capped at [`MAX_STRING_LEN`] and file contents
//! are streamed, never held.

use std::io::{self, BufReader, Read};

use super::{padding, NarReadError, NarSummary, MAGIC, MAX_DEPTH, MAX_STRING_LEN};
use crate::hash::HashingReader;

/// What the reader found next, in archive order (depth first, entries sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarEvent {
    /// A node starts. `name` is its entry name in the enclosing directory, `None` for the
    /// root. A [`NarNode::Directory`] is followed by its entries and then
    /// [`NarEvent::EndDirectory`].
    Node {
        name: Option<Vec<u8>>,
        node: NarNode,
    },
    /// The innermost open directory has no more entries.
    EndDirectory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarNode {
    /// A regular file; its contents can be read with [`NarReader::read_contents`] or
    /// [`NarReader::contents`] before asking for the next event, which skips whatever
    /// was not read.
    Regular {
        executable: bool,
        size: u64,
        /// Offset of the first content byte from the start of the archive, as `.ls`
        /// listings report it.
        nar_offset: u64,
    },
    Symlink {
        target: Vec<u8>,
    },
    Directory,
}

/// Where the parser stands between two events.
enum State {
    /// Nothing read yet.
    Magic,
    /// A node's `(` is next; `name` is what the event will carry.
    Node { name: Option<Vec<u8>> },
    /// Inside a regular file's contents.
    Contents { remaining: u64, pad: usize },
    /// A node ended; what follows depends on whether it was the root.
    AfterNode,
    /// Inside a directory: `entry` or `)` is next.
    DirBody,
    /// The root ended; only EOF may follow.
    End,
    /// EOF was checked; the archive is complete.
    Done,
    /// An error was returned; the position in the archive is unknown.
    Failed,
}

/// The longest keyword of the format ("executable", "directory", "contents").
const MAX_TOKEN_LEN: usize = 16;

/// A keyword read off the wire; anything longer than [`MAX_TOKEN_LEN`] is malformed
/// before it is allocated.
struct Token {
    buf: [u8; MAX_TOKEN_LEN],
    len: usize,
}

impl Token {
    fn is(&self, keyword: &[u8]) -> bool {
        &self.buf[..self.len] == keyword
    }
}

/// A streaming NAR parser and validator over any `Read`.
///
/// Drive it with [`next_event`](Self::next_event) until `Ok(None)`, then call
/// [`finish`](Self::finish) for NarHash and NarSize; or call `finish` right away to only
/// validate. The hash covers exactly the bytes consumed, and the archive only counts as
/// complete once EOF is seen right after its last `)`. After any error the reader is
/// poisoned and every further call fails.
pub struct NarReader<R> {
    // Buffered below the hasher, so small reads of tokens cost no system calls and the
    // hash still covers only what the parser consumed.
    input: HashingReader<BufReader<R>>,
    state: State,
    /// The last entry name of each open directory, innermost last (None before the
    /// first entry): names must strictly increase.
    dirs: Vec<Option<Vec<u8>>>,
}

impl<R: Read> NarReader<R> {
    pub fn new(input: R) -> Self {
        NarReader {
            input: HashingReader::new(BufReader::with_capacity(64 * 1024, input)),
            state: State::Magic,
            dirs: Vec::new(),
        }
    }

    /// Bytes of the archive consumed so far.
    pub fn position(&self) -> u64 {
        self.input.bytes_read()
    }

    /// The next event, or `None` once the archive ended and EOF followed it.
    pub fn next_event(&mut self) -> Result<Option<NarEvent>, NarReadError> {
        // The state stays `Failed` unless `step` completes a transition.
        let state = std::mem::replace(&mut self.state, State::Failed);
        self.step(state)
    }

    /// Reads the contents of the regular file the last event announced. `Ok(0)` once
    /// they are exhausted, or when the last event was not a regular file.
    pub fn read_contents(&mut self, buf: &mut [u8]) -> Result<usize, NarReadError> {
        let State::Contents { remaining, pad } = self.state else {
            return Ok(0);
        };
        if remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(remaining).unwrap_or(usize::MAX));
        self.state = State::Failed;
        let n = loop {
            match self.input.read(&mut buf[..want]) {
                Ok(0) => return Err(NarReadError::Truncated),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NarReadError::Io(e)),
            }
        };
        self.state = State::Contents {
            remaining: remaining - n as u64,
            pad,
        };
        Ok(n)
    }

    /// The current file's contents as a `Read`, e.g. for `io::copy` when restoring.
    pub fn contents(&mut self) -> NarContents<'_, R> {
        NarContents(self)
    }

    /// Reads whatever is left, checks the archive is complete and followed by EOF, and
    /// returns its hash and size.
    pub fn finish(mut self) -> Result<NarSummary, NarReadError> {
        while self.next_event()?.is_some() {}
        let (nar_hash, nar_size) = self.input.finish();
        Ok(NarSummary { nar_hash, nar_size })
    }

    fn step(&mut self, mut state: State) -> Result<Option<NarEvent>, NarReadError> {
        loop {
            state = match state {
                State::Magic => {
                    self.read_magic()?;
                    State::Node { name: None }
                }
                State::Node { name } => {
                    let node = self.read_node()?;
                    return Ok(Some(NarEvent::Node { name, node }));
                }
                State::Contents { remaining, pad } => {
                    self.skip(remaining)?;
                    self.read_padding(pad)?;
                    self.expect(b")", "expected ')' after file contents")?;
                    State::AfterNode
                }
                State::AfterNode if self.dirs.is_empty() => State::End,
                State::AfterNode => {
                    self.expect(b")", "expected ')' closing a directory entry")?;
                    State::DirBody
                }
                State::DirBody => {
                    let token = self.read_token("expected 'entry' or ')' in a directory")?;
                    if token.is(b")") {
                        self.dirs.pop();
                        self.state = State::AfterNode;
                        return Ok(Some(NarEvent::EndDirectory));
                    }
                    if !token.is(b"entry") {
                        return Err(NarReadError::Malformed(
                            "expected 'entry' or ')' in a directory",
                        ));
                    }
                    State::Node {
                        name: Some(self.read_entry_name()?),
                    }
                }
                State::End => {
                    self.expect_eof()?;
                    self.state = State::Done;
                    return Ok(None);
                }
                State::Done => {
                    self.state = State::Done;
                    return Ok(None);
                }
                State::Failed => return Err(NarReadError::Poisoned),
            }
        }
    }

    /// `(`, `type`, and the node up to where its event is due; sets the next state.
    fn read_node(&mut self) -> Result<NarNode, NarReadError> {
        self.expect(b"(", "expected '(' opening a node")?;
        self.expect(b"type", "expected 'type'")?;
        let kind = self.read_token("unknown node type")?;
        if kind.is(b"regular") {
            let mut token = self.read_token("expected 'executable' or 'contents'")?;
            let executable = token.is(b"executable");
            if executable {
                self.expect(b"", "the executable marker must be empty")?;
                token = self.read_token("expected 'contents'")?;
            }
            if !token.is(b"contents") {
                return Err(NarReadError::Malformed("expected 'contents'"));
            }
            let size = self.read_u64()?;
            self.state = State::Contents {
                remaining: size,
                pad: padding(size),
            };
            Ok(NarNode::Regular {
                executable,
                size,
                nar_offset: self.position(),
            })
        } else if kind.is(b"symlink") {
            self.expect(b"target", "expected 'target'")?;
            let target = self.read_string()?;
            // Neither can exist on disk, so no tree Nix dumped has them.
            if target.is_empty() || target.contains(&0) {
                return Err(NarReadError::BadTarget);
            }
            self.expect(b")", "expected ')' after a symlink target")?;
            self.state = State::AfterNode;
            Ok(NarNode::Symlink { target })
        } else if kind.is(b"directory") {
            if self.dirs.len() >= MAX_DEPTH {
                return Err(NarReadError::TooDeep);
            }
            self.dirs.push(None);
            self.state = State::DirBody;
            Ok(NarNode::Directory)
        } else {
            Err(NarReadError::Malformed("unknown node type"))
        }
    }

    /// After `entry`: `(`, `name`, the name, `node`. Checks the name and its order.
    fn read_entry_name(&mut self) -> Result<Vec<u8>, NarReadError> {
        self.expect(b"(", "expected '(' opening an entry")?;
        self.expect(b"name", "expected 'name'")?;
        let name = self.read_string()?;
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(NarReadError::BadName);
        }
        let last = self
            .dirs
            .last_mut()
            .ok_or(NarReadError::Malformed("entry outside a directory"))?;
        if last.as_ref().is_some_and(|prev| name <= *prev) {
            return Err(NarReadError::Unsorted);
        }
        *last = Some(name.clone());
        self.expect(b"node", "expected 'node'")?;
        Ok(name)
    }

    fn read_magic(&mut self) -> Result<(), NarReadError> {
        if self.read_u64()? != MAGIC.len() as u64 {
            return Err(NarReadError::BadMagic);
        }
        let mut buf = [0u8; 16];
        self.read_exact(&mut buf[..MAGIC.len()])?;
        if &buf[..MAGIC.len()] != MAGIC {
            return Err(NarReadError::BadMagic);
        }
        self.read_padding(padding(MAGIC.len() as u64))
    }

    fn expect(&mut self, keyword: &[u8], what: &'static str) -> Result<(), NarReadError> {
        if self.read_token(what)?.is(keyword) {
            Ok(())
        } else {
            Err(NarReadError::Malformed(what))
        }
    }

    fn read_token(&mut self, what: &'static str) -> Result<Token, NarReadError> {
        let len = self.read_u64()?;
        if len > MAX_TOKEN_LEN as u64 {
            return Err(NarReadError::Malformed(what));
        }
        let mut token = Token {
            buf: [0; MAX_TOKEN_LEN],
            len: len as usize,
        };
        self.read_exact(&mut token.buf[..token.len])?;
        self.read_padding(padding(len))?;
        Ok(token)
    }

    /// A name or symlink target.
    fn read_string(&mut self) -> Result<Vec<u8>, NarReadError> {
        let len = self.read_u64()?;
        if len > MAX_STRING_LEN {
            return Err(NarReadError::TooLong);
        }
        let mut s = vec![0; len as usize];
        self.read_exact(&mut s)?;
        self.read_padding(padding(len))?;
        Ok(s)
    }

    fn read_u64(&mut self) -> Result<u64, NarReadError> {
        let mut buf = [0u8; 8];
        self.read_exact(&mut buf)?;
        Ok(u64::from_le_bytes(buf))
    }

    fn read_padding(&mut self, pad: usize) -> Result<(), NarReadError> {
        let mut buf = [0u8; 8];
        self.read_exact(&mut buf[..pad])?;
        if buf.iter().any(|&b| b != 0) {
            return Err(NarReadError::BadPadding);
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarReadError> {
        self.input.read_exact(buf).map_err(eof_is_truncation)
    }

    /// Consumes (and so hashes) `n` bytes of file contents.
    fn skip(&mut self, n: u64) -> Result<(), NarReadError> {
        let copied =
            io::copy(&mut (&mut self.input).take(n), &mut io::sink()).map_err(eof_is_truncation)?;
        if copied < n {
            return Err(NarReadError::Truncated);
        }
        Ok(())
    }

    fn expect_eof(&mut self) -> Result<(), NarReadError> {
        let mut byte = [0u8; 1];
        loop {
            match self.input.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => return Err(NarReadError::TrailingData),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NarReadError::Io(e)),
            }
        }
    }
}

fn eof_is_truncation(e: io::Error) -> NarReadError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        NarReadError::Truncated
    } else {
        NarReadError::Io(e)
    }
}

/// The contents of the current regular file as a `Read`; see [`NarReader::contents`].
pub struct NarContents<'a, R>(&'a mut NarReader<R>);

impl<R: Read> Read for NarContents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_contents(buf).map_err(|e| match e {
            NarReadError::Io(e) => e,
            NarReadError::Truncated => io::ErrorKind::UnexpectedEof.into(),
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        })
    }
}
