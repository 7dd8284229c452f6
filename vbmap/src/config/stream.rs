//! Splitting a streamed config body into documents, sans-IO. A streaming
//! endpoint (`/pools/default/bucketsStreaming/<name>`) sends one JSON
//! document per config change, each followed by [`STREAM_SEPARATOR`], in an
//! HTTP body that arrives in chunks cut anywhere. [`StreamSplitter`] takes
//! the chunks and hands back whole documents, holding at most one
//! incomplete document, whose size is capped so a broken or hostile peer
//! cannot make it grow without bound.

use super::ConfigError;

/// What ends each document on a config stream.
pub const STREAM_SEPARATOR: &[u8] = b"\n\n\n\n";

/// Default cap on one streamed document: 16 MiB is hundreds of times a
/// 1024-vbucket config of a 100-node cluster.
pub const DEFAULT_MAX_DOCUMENT_SIZE: usize = 16 << 20;

/// Cuts a chunked config stream into documents.
///
/// Feed every chunk to [`StreamSplitter::push`], which returns the documents
/// completed by it (without the separator; blank documents, which carry no
/// config, are skipped). At the end of the body [`StreamSplitter::finish`]
/// returns what is left, which lets the same splitter read a plain,
/// unseparated `GET` response. After an error the splitter stays failed:
/// the stream's framing can no longer be trusted and the connection should
/// be dropped.
#[derive(Clone, Debug)]
pub struct StreamSplitter {
    /// Bytes of the incomplete document (and maybe a partial separator).
    /// Never longer than `max + STREAM_SEPARATOR.len()`.
    buf: Vec<u8>,
    /// Bytes of `buf` already searched: the separator cannot start before
    /// `scanned`, so each byte is searched about once.
    scanned: usize,
    /// Largest document accepted, in bytes, separator excluded.
    max: usize,
    /// Set once a document exceeded `max`.
    failed: bool,
}

impl Default for StreamSplitter {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_DOCUMENT_SIZE)
    }
}

impl StreamSplitter {
    /// A splitter accepting documents of up to `max_document_size` bytes.
    pub fn new(max_document_size: usize) -> Self {
        StreamSplitter {
            buf: Vec::new(),
            scanned: 0,
            max: max_document_size,
            failed: false,
        }
    }

    /// Add a chunk of the body; returns the documents it completed, in
    /// order. Fails with [`ConfigError::DocumentTooLarge`] as soon as the
    /// incomplete document is longer than the limit.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, ConfigError> {
        let mut documents = Vec::new();
        let mut rest = chunk;
        loop {
            if self.failed {
                return Err(self.too_large());
            }
            if rest.is_empty() {
                return Ok(documents);
            }
            // Copy no more than could still belong to one valid document
            // plus its separator, so the buffer stays bounded however large
            // the chunk; the rest of the chunk is taken on the next turn.
            let room = self.capacity().saturating_sub(self.buf.len());
            let (take, tail) = rest.split_at(room.min(rest.len()));
            rest = tail;
            self.buf.extend_from_slice(take);
            self.split_buffered(&mut documents);
        }
    }

    /// End of the body: the bytes after the last separator, unless blank.
    /// On a stream they are a truncated document; on a plain `GET` body
    /// they are the whole config.
    pub fn finish(&mut self) -> Result<Option<Vec<u8>>, ConfigError> {
        if self.failed {
            return Err(self.too_large());
        }
        self.scanned = 0;
        let rest = std::mem::take(&mut self.buf);
        Ok((!rest.trim_ascii().is_empty()).then_some(rest))
    }

    /// Bytes held for the incomplete document.
    pub fn buffered_len(&self) -> usize {
        self.buf.len()
    }

    /// Move every complete document out of `buf`, then check what remains.
    fn split_buffered(&mut self, documents: &mut Vec<Vec<u8>>) {
        let mut start = 0;
        while let Some(at) = find_separator(&self.buf[self.scanned..]) {
            let end = self.scanned + at;
            let document = &self.buf[start..end];
            if !document.trim_ascii().is_empty() {
                documents.push(document.to_vec());
            }
            start = end + STREAM_SEPARATOR.len();
            self.scanned = start;
        }
        // One drain per piece, not per document, so many small documents
        // in one piece cost linear time.
        self.buf.drain(..start);
        // The last len - 1 bytes may be the start of a separator.
        self.scanned = self.buf.len().saturating_sub(STREAM_SEPARATOR.len() - 1);
        // A document of at most `max` bytes has its separator complete
        // within max + 4 bytes; a full buffer with no separator therefore
        // holds a document that is too large.
        if self.buf.len() >= self.capacity() {
            self.failed = true;
            self.buf = Vec::new();
        }
    }

    /// Most bytes `buf` may hold: a largest document and its separator.
    fn capacity(&self) -> usize {
        self.max.saturating_add(STREAM_SEPARATOR.len())
    }

    fn too_large(&self) -> ConfigError {
        ConfigError::DocumentTooLarge { limit: self.max }
    }
}

/// Position of the first separator in `haystack`.
fn find_separator(haystack: &[u8]) -> Option<usize> {
    haystack
        .windows(STREAM_SEPARATOR.len())
        .position(|w| w == STREAM_SEPARATOR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feed `chunks` in order; the documents, or the first error.
    fn split_all<'a>(
        splitter: &mut StreamSplitter,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<Vec<u8>>, ConfigError> {
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(splitter.push(chunk)?);
        }
        Ok(out)
    }

    fn stream_of(documents: &[&str]) -> Vec<u8> {
        documents
            .iter()
            .flat_map(|d| [d.as_bytes(), STREAM_SEPARATOR].concat())
            .collect()
    }

    #[test]
    fn splits_on_the_separator() {
        let mut splitter = StreamSplitter::default();
        let docs = splitter
            .push(&stream_of(&[r#"{"rev":1}"#, r#"{"rev":2}"#]))
            .unwrap();
        assert_eq!(docs, [br#"{"rev":1}"#.to_vec(), br#"{"rev":2}"#.to_vec()]);
        assert_eq!(splitter.buffered_len(), 0);
        assert_eq!(splitter.finish().unwrap(), None);
    }

    #[test]
    fn blank_documents_are_skipped() {
        let mut splitter = StreamSplitter::default();
        let docs = splitter.push(b"\n\n\n\n{}\n\n\n\n \r\n\n\n\n\n").unwrap();
        assert_eq!(docs, [b"{}".to_vec()]);
    }

    #[test]
    fn every_single_cut_gives_the_same_documents() {
        let body = stream_of(&[r#"{"a":1}"#, "x", r#"{"b":"\n\n"}"#]);
        let whole = split_all(&mut StreamSplitter::default(), [&body[..]]).unwrap();
        assert_eq!(whole.len(), 3);
        for cut in 0..=body.len() {
            let (a, b) = body.split_at(cut);
            let mut splitter = StreamSplitter::default();
            assert_eq!(
                split_all(&mut splitter, [a, b]).unwrap(),
                whole,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn finish_returns_an_unterminated_body() {
        let mut splitter = StreamSplitter::default();
        assert!(splitter.push(br#"{"rev":1}"#).unwrap().is_empty());
        assert_eq!(splitter.finish().unwrap(), Some(br#"{"rev":1}"#.to_vec()));
        assert_eq!(splitter.finish().unwrap(), None);
    }

    #[test]
    fn oversized_document_is_rejected() {
        let mut splitter = StreamSplitter::new(8);
        // Exactly the limit is fine, with the separator in the same chunk
        // or not.
        assert_eq!(
            splitter.push(b"12345678\n\n\n\n").unwrap(),
            [b"12345678".to_vec()]
        );
        assert!(splitter.push(b"12345678\n\n\n").unwrap().is_empty());
        assert_eq!(splitter.push(b"\n").unwrap(), [b"12345678".to_vec()]);
        // One byte more is not, and the error sticks.
        let err = splitter.push(b"123456789\n\n\n\n").unwrap_err();
        assert_eq!(err, ConfigError::DocumentTooLarge { limit: 8 });
        assert!(
            err.to_string().contains("maximum document size of 8 bytes"),
            "{err}"
        );
        assert_eq!(splitter.push(b"{}\n\n\n\n").unwrap_err(), err);
        assert_eq!(splitter.finish().unwrap_err(), err);
    }

    #[test]
    fn oversized_document_is_rejected_before_its_end_arrives() {
        let mut splitter = StreamSplitter::new(1024);
        let mut result = Ok(Vec::new());
        for _ in 0..100 {
            result = splitter.push(&[b'x'; 100]);
            assert!(splitter.buffered_len() <= 1024 + STREAM_SEPARATOR.len());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ConfigError::DocumentTooLarge { limit: 1024 }));
    }

    #[test]
    fn a_huge_chunk_is_not_buffered_whole() {
        let mut splitter = StreamSplitter::new(16);
        let chunk = vec![b'x'; 1 << 20];
        assert!(splitter.push(&chunk).is_err());
        assert_eq!(splitter.buffered_len(), 0);
    }

    #[test]
    fn many_documents_in_one_chunk_larger_than_the_limit() {
        let docs: Vec<String> = (0..1000).map(|i| format!("{{\"rev\":{i}}}")).collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let body = stream_of(&refs);
        let mut splitter = StreamSplitter::new(16);
        let out = splitter.push(&body).unwrap();
        assert_eq!(out.len(), 1000);
        assert_eq!(out[999], docs[999].as_bytes());
    }

    proptest! {
        /// Law: however the body is cut into chunks, the same documents
        /// come out, in order, and nothing is left over.
        #[test]
        fn any_chunking_gives_the_same_documents(
            documents in prop::collection::vec("[a-z0-9{}:,\" \\n]{0,40}", 0..8),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        ) {
            // A document ending in '\n' would lend its newline to the
            // separator; real documents are JSON and end in '}'.
            let documents: Vec<String> = documents
                .into_iter()
                .map(|d| d.trim_end_matches('\n').to_owned())
                .filter(|d| !d.contains("\n\n\n\n"))
                .collect();
            let refs: Vec<&str> = documents.iter().map(String::as_str).collect();
            let body = stream_of(&refs);
            let expected: Vec<Vec<u8>> = documents
                .iter()
                .filter(|d| !d.trim().is_empty())
                .map(|d| d.as_bytes().to_vec())
                .collect();

            let mut positions: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            positions.push(0);
            positions.push(body.len());
            positions.sort_unstable();
            let chunks = positions.windows(2).map(|w| &body[w[0]..w[1]]);
            let mut splitter = StreamSplitter::new(64);
            prop_assert_eq!(split_all(&mut splitter, chunks).unwrap(), expected);
            prop_assert_eq!(splitter.finish().unwrap(), None);
        }
    }
}
